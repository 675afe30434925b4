"""FedGeo: federated next-location learning robust to extreme users and client drift.

On top of FedAvg, three independent switches:

* **probabilistic exclusion** (``exclusion``): once the clients' data profiles are known
  (:meth:`FedGeo.set_profiles`), each node is eligible in a round with a probability that
  grows with its number of distinct places (floored, never zero), and the participants
  are drawn uniformly among the eligible (:mod:`server.strategies.exclusion`);
* **drift-minimizing aggregation** (``aggregation``): ``"mean"`` (FedAvg),
  ``"drift-weighted"`` or ``"geometric-median"`` (:mod:`server.strategies.aggregation`);
* **proximal anchoring** (``proximal_mu``): sent as ``"proximal-mu"`` in the train
  config, clients add ``mu/2 ||w - w_global||^2`` to their loss (as in FedProx);
* **dynamic correction** (``dynamic_alpha`` > 0, off by default): FedDyn's dynamic
  regularization around the chosen aggregate. Clients minimize FedDyn's local objective
  (``"feddyn-alpha"`` in the config; its ``alpha/2`` term replaces the proximal one),
  and the server keeps FedDyn's ``h`` and moves the aggregate by ``-h / alpha``
  (docs/method.md, "Dynamic correction");
* **control variates** (``control_variates``, off by default): SCAFFOLD's drift
  correction under the chosen aggregate. Every instruction carries the server control
  variate ``c`` (``"server-control"``), clients correct their gradients with ``c - c_i``
  and reply their control change, and the server updates ``c`` as SCAFFOLD does
  (docs/method.md, "Control variates");

plus a server learning rate ``server_lr``: ``theta <- theta + server_lr * (agg - theta)``.
With exclusion disabled, ``aggregation="mean"``, ``proximal_mu=0`` and ``server_lr=1``
the strategy samples and aggregates exactly like Flower's FedAvg.

Every round's training metrics also hold ``drift`` (example-weighted mean distance of
the clients' models to the new global model), ``drift-max``, ``participants`` and
``aggregation-iterations``; the per-round log is kept in ``participation`` and ``drift_log``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from time import sleep
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, sample_nodes
from flwr.supercore import log

from server.defaults import DEFAULTS
from server.strategies.aggregation import (
    AGGREGATIONS,
    DRIFT_SCALE,
    MEDIAN_MAX_ITER,
    MEDIAN_TOL,
    Workspace,
    client_distances,
    get_aggregator,
)
from server.strategies.contract import (
    CONTROL_DELTA,
    FEDDYN_ALPHA,
    PROXIMAL_MU,
    SERVER_CONTROL,
    TrainReply,
    array_views,
    as_dtype,
    to_arrayrecord,
    to_numpy,
    valid_train_replies,
)
from server.strategies.exclusion import (
    ExclusionConfig,
    participation_probability,
    ramped_probability,
    sample_participants,
)
from server.strategies.feddyn import update_h
from server.strategies.scaffold import control_delta, control_record, update_control

WEIGHTINGS = ("examples", "uniform")
"""Names accepted by FedGeo's ``weighting``."""


class FedGeo(FedAvg):
    """The FedGeo strategy.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in Flower's FedAvg. The round's sample size is FedAvg's
        ``max(int(fraction_train * available), min_train_nodes)``; with exclusion it is
        the most participants a round can have.
    exclusion : ExclusionConfig or None
        Probabilistic exclusion; None (or ``enabled=False``) samples uniformly.
    aggregation : str
        ``"mean"``, ``"drift-weighted"`` or ``"geometric-median"``.
    proximal_mu : float
        Proximal weight sent to clients as ``"proximal-mu"`` (0 disables it).
    server_lr : float
        Server learning rate on the aggregated update (1 uses the aggregate as is).
    seed : int
        Seeds the exclusion draws: round ``r`` uses ``np.random.default_rng([seed, r])``.
    drift_scale : float
        ``tau = drift_scale * median distance`` of the drift-weighted mean.
    median_max_iter, median_tol, median_eps : settings of the geometric median.
    weighting : str
        How much each client counts in the aggregate: ``"examples"`` (its number of
        training examples, as FedAvg) or ``"uniform"`` (one client, one user, one vote).
    dynamic_alpha : float
        FedDyn's alpha for the dynamic correction (0 disables it).
    control_variates : bool
        SCAFFOLD's control variates under the chosen aggregate (exclusive with
        ``dynamic_alpha``; the clients' correction replaces the proximal term).

    The defaults of FedGeo's own settings are the run config's
    (:data:`server.defaults.DEFAULTS`); the others are FedAvg's.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        *,
        exclusion: ExclusionConfig | None = None,
        aggregation: str = str(DEFAULTS["fedgeo-aggregation"]),
        proximal_mu: float = float(DEFAULTS["proximal-mu"]),
        server_lr: float = float(DEFAULTS["server-lr"]),
        seed: int = 0,
        drift_scale: float = DRIFT_SCALE,
        median_max_iter: int = MEDIAN_MAX_ITER,
        median_tol: float = MEDIAN_TOL,
        median_eps: float = 1e-8,
        weighting: str = str(DEFAULTS["fedgeo-weighting"]),
        dynamic_alpha: float = float(DEFAULTS["fedgeo-dynamic-alpha"]),
        control_variates: bool = bool(DEFAULTS["fedgeo-control-variates"]),
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}"
            )
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        if not dynamic_alpha >= 0:
            raise ValueError(f"dynamic_alpha must be >= 0, got {dynamic_alpha}")
        if control_variates and dynamic_alpha > 0:
            raise ValueError(
                "control_variates and dynamic_alpha > 0 are two drift corrections; choose one"
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        get_aggregator(aggregation, drift_scale=drift_scale)  # validates the settings early
        self.exclusion = exclusion
        self.aggregation = aggregation
        self.proximal_mu = float(proximal_mu)
        self.server_lr = float(server_lr)
        self.seed = int(seed)
        self.drift_scale = float(drift_scale)
        self.median_max_iter = int(median_max_iter)
        self.median_tol = float(median_tol)
        self.median_eps = float(median_eps)
        self.weighting = weighting
        self.dynamic_alpha = float(dynamic_alpha)
        self.h: dict[str, np.ndarray] | None = None
        """The dynamic correction's state (FedDyn's ``h``; float64, zeros at the start)."""
        self.control_variates = bool(control_variates)
        self.control: dict[str, np.ndarray] | None = None
        """The control variates' state (SCAFFOLD's ``c``; float64, zeros at the start)."""
        self.num_available_nodes = 0
        self.workspace = Workspace()
        """The geometric median's reusable matrix (scratch space, checkpointed empty)."""
        self.profiles: dict[int, dict[str, Any]] = {}
        self.probabilities: dict[int, float] = {}
        self.participation: dict[int, dict[str, Any]] = {}
        self.drift_log: dict[int, dict[str, float | int]] = {}
        self.current_arrays: dict[str, np.ndarray] | None = None

    @property
    def excludes(self) -> bool:
        """Whether exclusion is on and profiles are known."""
        return bool(self.exclusion is not None and self.exclusion.enabled and self.profiles)

    def summary(self) -> None:
        log(INFO, "\t├──> FedGeo settings:")
        log(INFO, "\t│\t├── Exclusion: %s", self.exclusion)
        log(INFO, "\t│\t├── Aggregation: %s (%s weights)", self.aggregation, self.weighting)
        log(INFO, "\t│\t├── Proximal mu: %s", self.proximal_mu)
        log(INFO, "\t│\t├── Dynamic alpha: %s", self.dynamic_alpha)
        log(INFO, "\t│\t├── Control variates: %s", self.control_variates)
        log(INFO, "\t│\t└── Server learning rate: %s", self.server_lr)
        super().summary()

    def set_profiles(self, profiles: Mapping[int, Mapping[str, Any]]) -> None:
        """Node id -> data profile (``fedgeo.data.stats.user_profile`` of the client,
        from its query reply); computes each node's participation probability."""
        config = self.exclusion if self.exclusion is not None else ExclusionConfig(enabled=False)
        self.profiles = {int(k): dict(v) for k, v in profiles.items()}
        self.probabilities = {
            node: participation_probability(profile, config)
            for node, profile in self.profiles.items()
        }

    def probability(self, node_id: int, server_round: int = 1) -> float:
        """The node's participation probability in ``server_round`` (1 for nodes without a
        profile; with a ramp it rises to 1 over the ramp's rounds)."""
        if not self.excludes:
            return 1.0
        assert self.exclusion is not None
        base = self.probabilities.get(int(node_id), 1.0)
        return ramped_probability(base, server_round, self.exclusion.ramp_rounds)

    # --- training ------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample (with exclusion when profiles are known) and send the global arrays."""
        if self.fraction_train == 0.0:
            return []
        self.current_arrays = to_numpy(arrays)
        num_nodes = int(len(list(grid.get_node_ids())) * self.fraction_train)
        sample_size = max(num_nodes, self.min_train_nodes)
        if self.excludes:
            available = self._wait_for_nodes(grid, max(self.min_available_nodes, sample_size))
            probs = [self.probability(n, server_round) for n in available]
            missing = [n for n in available if n not in self.probabilities]
            if missing:
                log(WARNING, "FedGeo: %d node(s) without a profile get p=1", len(missing))
            rng = np.random.default_rng([self.seed, server_round])
            node_ids = sample_participants(available, probs, sample_size, rng)
            eligible_note = "exclusion"
        else:
            node_ids, available = sample_nodes(grid, self.min_available_nodes, sample_size)
            eligible_note = "uniform"
        self.participation[server_round] = {
            "node_ids": [int(n) for n in node_ids],
            "probabilities": [self.probability(n, server_round) for n in node_ids],
            "available": len(available),
            "sampling": eligible_note,
        }
        log(
            INFO,
            "configure_train: Sampled %s nodes (out of %s, %s)",
            len(node_ids),
            len(available),
            eligible_note,
        )
        if not node_ids:
            log(WARNING, "FedGeo: no node is eligible in round %s; it trains nobody", server_round)
        config["server-round"] = server_round
        if self.dynamic_alpha > 0:
            config[FEDDYN_ALPHA] = self.dynamic_alpha
            config[PROXIMAL_MU] = 0.0
            self.num_available_nodes = len(available)
            if self.h is None:
                self.h = {
                    k: np.zeros(v.shape, dtype=np.float64) for k, v in self.current_arrays.items()
                }
        elif self.control_variates:
            config[PROXIMAL_MU] = 0.0
            self.num_available_nodes = len(available)
        else:
            config[PROXIMAL_MU] = self.proximal_mu
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        if self.control_variates:
            self.control, control = control_record(self.control, self.current_arrays, "FedGeo")
            record[SERVER_CONTROL] = control
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    @staticmethod
    def _wait_for_nodes(grid: Grid, minimum: int) -> list[int]:
        while len(nodes := list(grid.get_node_ids())) < minimum:
            log(INFO, "Waiting for nodes to connect: %d connected (need %d).", len(nodes), minimum)
            sleep(1)
        return nodes

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the chosen aggregator; add drift diagnostics to the metrics."""
        extra_keys = (CONTROL_DELTA,) if self.control_variates else ()
        valid = valid_train_replies(self, replies, extra_keys=extra_keys)
        if not valid:
            return None, None
        if self.control_variates:
            self._update_control(valid)
        contents = [r.content for r in valid]
        client_arrays = [array_views(r.arrays) for r in valid]  # read-only, no copies
        weights = [r.weight(self.weighted_by_key) for r in valid]
        if self.weighting == "uniform":
            weights = [1.0] * len(valid)
        if self.aggregation == "mean" and self.weighting == "examples":
            # Flower's own FedAvg arithmetic, so that FedGeo-with-everything-off == FedAvg.
            aggregated = to_numpy(aggregate_arrayrecords(contents, self.weighted_by_key))
            diagnostics: dict[str, float | int] = {"aggregation-iterations": 0}
            distances = None
        else:
            aggregator = get_aggregator(
                self.aggregation,
                drift_scale=self.drift_scale,
                max_iter=self.median_max_iter,
                tol=self.median_tol,
                eps=self.median_eps,
                workspace=self.workspace,
            )
            result = aggregator(list(zip(client_arrays, weights, strict=True)))
            aggregated = result.arrays
            diagnostics = {"aggregation-iterations": result.iterations}
            distances = result.distances  # to the aggregate, before the cast to float32
        if self.dynamic_alpha > 0:
            aggregated = self._dynamic_correction(aggregated, client_arrays)
            distances = None
        if self.server_lr != 1.0:
            if self.current_arrays is None:
                raise AggregationError(reason="FedGeo: configure_train was not called first")
            aggregated = {
                k: as_dtype(
                    self.current_arrays[k].astype(np.float64)
                    + self.server_lr
                    * (v.astype(np.float64) - self.current_arrays[k].astype(np.float64)),
                    self.current_arrays[k].dtype,
                )
                for k, v in aggregated.items()
            }
            distances = None
        if distances is None:
            distances = client_distances(client_arrays, aggregated)
        w = np.asarray(weights, dtype=np.float64)
        drift = float(w @ distances / w.sum()) if w.sum() > 0 else float(distances.mean())
        diagnostics.update(
            {
                "drift": drift,
                "drift-max": float(distances.max()),
                "participants": len(valid),
            }
        )
        self.drift_log[server_round] = dict(diagnostics)
        if server_round in self.participation:
            self.participation[server_round]["replied"] = [r.node_id for r in valid]
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        for key, value in diagnostics.items():
            metrics[key] = value
        self.current_arrays = aggregated
        return to_arrayrecord(aggregated), metrics

    def _update_control(self, valid: list[TrainReply]) -> None:
        """SCAFFOLD's step of ``c`` from the replies' control changes (uniform mean)."""
        if self.control is None:
            raise AggregationError(reason="FedGeo: configure_train was not called first")
        deltas = [
            control_delta(self.control, r.node_id, r.extras.get(CONTROL_DELTA), "FedGeo")
            for r in valid
        ]
        update_control(self.control, deltas, self.num_available_nodes)

    def _dynamic_correction(
        self, aggregated: dict[str, np.ndarray], client_arrays: list[dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """FedDyn's server step around ``aggregated``: with ``k`` replies, ``n`` nodes
        available and ``theta_prev`` the global arrays sent,
        ``h <- h - alpha * sum_i (theta_i - theta_prev) / n`` and
        ``theta <- aggregated - h / alpha``."""
        if self.current_arrays is None or self.h is None:
            raise AggregationError(reason="FedGeo: configure_train was not called first")
        alpha = self.dynamic_alpha
        update_h(
            self.h,
            self.current_arrays,
            client_arrays,
            alpha,
            self.num_available_nodes,
            "FedGeo (dynamic correction)",
        )
        return {
            key: as_dtype(aggregated[key].astype(np.float64) - self.h[key] / alpha, prev.dtype)
            for key, prev in self.current_arrays.items()
        }
