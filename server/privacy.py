"""Differential privacy for model updates: Flower's fixed-clipping wrappers, FedGeo's way.

``dp = "server"`` wraps the strategy in Flower's
``DifferentialPrivacyServerSideFixedClipping`` (the server clips every update to norm
``C`` around the global model, then noises the aggregate); ``dp = "client"`` in
``DifferentialPrivacyClientSideFixedClipping`` (the clients clip with Flower's
``fixedclipping_mod``, the server noises). Both add ``N(0, (z C / m)^2)`` to every
shared scalar, ``m`` being the clients expected per round. On top of Flower's wrappers
(:class:`ServerSideDP`, :class:`ClientSideDP`):

* **uniform weights**: every reply counts once (its weight metric is set to 1), as the
  sensitivity ``C / m`` assumes; an example-weighted mean gives one client up to all of
  the weight;
* **exact clipping of every array**: Flower 1.42's clipping leaves 0-d arrays unclipped
  (see ``_FedGeoDP._clip``), so the server clips each update to ``C`` itself, in both
  modes; under client-side clipping it counts the updates its clients did not clip;
* **seeded noise in simulation** (``(seed, round)``, reproducible and resumable), fresh
  OS entropy on a deployment (nobody can recompute it);
* **a per-round release log** read by :class:`PrivacyLedger`, which accounts the
  privacy spent with opacus's RDP accountant (:mod:`fedgeo.privacy`) and writes
  ``results["privacy"]``.

DP needs an aggregate that is the plain mean of this round's updates (see
:func:`check_strategy`): FedAvg, FedProx, FedGeo with ``fedgeo-aggregation = "mean"``,
or an import-path FedAvg subclass that keeps FedAvg's ``aggregate_train``. Only the
shared arrays are covered: personal parameters never leave the device, and training
metrics are not noised. docs/privacy.md explains the choices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.supercore.differential_privacy import compute_stdv

from fedgeo.privacy import (
    default_delta,
    effective_noise_multiplier,
    ldp_total_epsilon,
    rdp_epsilon,
    round_sample_size,
)
from server.defaults import DEFAULTS
from server.strategies.fedgeo import FedGeo

DP_MODES = ("none", "server", "client")
"""Values of the ``dp`` run-config key."""
NOISE_TAG = 0x4450  # "DP": separates the noise stream from other seeded streams
CLIP_RTOL = 1e-3
"""Relative slack (float32 rounding) before an update counts as not clipped by its client."""


@dataclass(frozen=True)
class DPSettings:
    """The ``dp*`` run-config keys of a DP run."""

    mode: str
    """``"server"`` or ``"client"``: where updates are clipped."""
    noise_multiplier: float
    clipping_norm: float
    delta: float
    """Target delta; 0 = :func:`fedgeo.privacy.default_delta` of the population."""

    def __post_init__(self) -> None:
        if self.mode not in ("server", "client"):
            raise ValueError(f"run-config 'dp' must be one of {DP_MODES}, got {self.mode!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(
                f"run-config 'dp-noise-multiplier' must be >= 0, got {self.noise_multiplier}"
            )
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise ValueError(f"run-config 'dp-clipping-norm' must be > 0, got {self.clipping_norm}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(
                f"run-config 'dp-delta' must be in [0, 1) (0 = automatic), got {self.delta}"
            )

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> DPSettings | None:
        """The settings in a flat run config, or None when ``dp`` is ``"none"``/absent."""
        mode = str(values.get("dp", DEFAULTS["dp"])).strip().lower()
        if mode == "none":
            return None
        if mode not in DP_MODES:
            raise ValueError(f"run-config 'dp' must be one of {DP_MODES}, got {mode!r}")
        return cls(
            mode=mode,
            **{
                name: float(values.get(key, DEFAULTS[key]))
                for name, key in (
                    ("noise_multiplier", "dp-noise-multiplier"),
                    ("clipping_norm", "dp-clipping-norm"),
                    ("delta", "dp-delta"),
                )
            },
        )


def check_strategy(strategy: Strategy) -> None:
    """Raise ValueError unless ``strategy`` releases the plain mean of this round's
    updates (what Gaussian noise of std ``z C / m`` makes ``(epsilon, delta)``-DP)."""
    name = type(strategy).__name__
    if isinstance(strategy, FedGeo):
        if strategy.aggregation != "mean":
            raise ValueError(
                f"dp needs fedgeo-aggregation = 'mean', not {strategy.aggregation!r}: the "
                "noise is calibrated to the sensitivity C/m of a mean of m clipped updates; "
                "one user can move the geometric median or the drift-weighted mean by up to "
                "2C, m times more (docs/privacy.md)"
            )
        if strategy.dynamic_alpha > 0 or strategy.control_variates:
            raise ValueError(
                "dp is not supported with fedgeo-dynamic-alpha > 0 or "
                "fedgeo-control-variates = true: the server would keep state built from the "
                "un-noised updates (FedDyn's h) or receive un-clipped control variates "
                "(docs/privacy.md)"
            )
        return
    if isinstance(strategy, FedAvg) and type(strategy).aggregate_train is FedAvg.aggregate_train:
        return
    raise ValueError(
        f"dp is not supported with {name}: its aggregate_train is not FedAvg's mean "
        "(server optimizers and FedDyn keep un-noised state across rounds, SCAFFOLD sends "
        "un-clipped control variates, local-only sends nothing); use fedavg, fedprox or "
        "fedgeo with fedgeo-aggregation = 'mean' (docs/privacy.md)"
    )


def unwrap(strategy: Strategy) -> Strategy:
    """The strategy inside a DP wrapper (the strategy itself otherwise)."""
    while isinstance(strategy, DifferentialPrivacyFixedClippingBase):
        strategy = strategy.strategy
    return strategy


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """Euclidean norm (float64) of ``arrays - reference`` over all of ``reference``'s arrays."""
    squared = 0.0
    for key, ref in reference.items():
        diff = np.asarray(arrays[key], dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        squared += float(np.vdot(diff, diff))
    return math.sqrt(squared)


class _FedGeoDP:
    """What FedGeo adds to Flower's fixed-clipping wrappers (see the module docstring).

    Mixed in before the Flower class, so ``super()`` is Flower's wrapper.
    """

    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int
    strategy: Strategy

    def _init_fedgeo(self) -> None:
        self.seed = 0
        self.seeded_noise = True
        """Simulation: noise from ``(seed, round)``; False: fresh OS entropy."""
        self.last_release: dict[str, Any] | None = None
        """What the last ``aggregate_train`` released (None when it released nothing)."""
        self._sent: dict[str, np.ndarray] = {}
        self._noise_round = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = _arrays(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.last_release = None
        weight_key = getattr(unwrap(self.strategy), "weighted_by_key", "num-examples")
        for reply in replies:
            for metrics in reply.content.metric_records.values():
                if weight_key in metrics:
                    metrics[weight_key] = 1  # uniform weights: sensitivity C / m
        over, unclipped = self._clip(replies)
        self._noise_round = server_round
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            server_side = isinstance(self, DifferentialPrivacyServerSideFixedClipping)
            self.last_release = {
                "round": int(server_round),
                "replies": len(replies),
                "noise_std": self._noise_std(),
                "clipped": over if server_side else None,
                "not_clipped_by_client": None if server_side else unclipped,
            }
        return arrays, metrics

    def _clip(self, replies: list[Message]) -> tuple[int, int]:
        """Clip every reply's update to norm ``C`` around the sent arrays, in float64 and
        in the sent key order, before Flower's wrapper sees it.

        Flower 1.42's ``compute_clip_model_update`` scales updates in place and so
        leaves 0-d arrays (FedGeo's ``propagation_gate``) unclipped, on the server and in
        ``fixedclipping_mod`` alike: this clipping is what bounds the sensitivity; the
        wrapper's own clipping then finds nothing left to do. Returns the number of
        updates longer than ``C``, and of those whose arrays of one or more dimensions
        alone exceed ``C`` beyond float32 rounding (under client-side clipping: clients
        that did not run ``fixedclipping_mod``, whose 0-d miss is not their fault).
        """
        over = unclipped = 0
        bound = self.clipping_norm
        tensors = {k: v for k, v in self._sent.items() if np.ndim(v)}
        for reply in replies:
            for name, record in list(reply.content.array_records.items()):
                if not self._sent or set(record) != set(self._sent):
                    continue  # not model arrays; check_strategy keeps these out of DP runs
                arrays = _arrays(record)
                norm = update_norm(arrays, self._sent)
                over += norm > bound
                unclipped += update_norm(arrays, tensors) > bound * (1.0 + CLIP_RTOL)
                scale = bound / norm if norm > bound else 1.0
                clipped = {}
                for key, reference in self._sent.items():
                    value = np.asarray(arrays[key])
                    if scale < 1.0 and np.issubdtype(value.dtype, np.floating):
                        ref = np.asarray(reference, dtype=np.float64)
                        step = (value.astype(np.float64) - ref) * scale
                        value = np.asarray(ref + step).astype(value.dtype)
                    clipped[key] = Array(np.array(value, order="C"))
                reply.content[name] = ArrayRecord(clipped)
        return over, unclipped

    def _noise_std(self) -> float:
        return compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Flower's Gaussian noise (std ``z C / m``), drawn from FedGeo's generator."""
        if self.seeded_noise:
            rng = np.random.default_rng([int(self.seed), int(self._noise_round), NOISE_TAG])
        else:
            rng = np.random.default_rng()
        std = self._noise_std()
        out = {}
        for key, array in aggregated_arrays.items():
            value = np.asarray(array.numpy())
            if np.issubdtype(value.dtype, np.floating) and std > 0:
                value = (value + rng.normal(0.0, std, value.shape)).astype(value.dtype)
            out[key] = Array(np.asarray(value, order="C"))
        return ArrayRecord(out)


class ServerSideDP(_FedGeoDP, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping with FedGeo's additions."""

    def __init__(self, strategy: Strategy, noise_multiplier: float, clipping_norm: float) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients=1)
        self._init_fedgeo()


class ClientSideDP(_FedGeoDP, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping (clients run ``fixedclipping_mod``) with
    FedGeo's additions."""

    def __init__(self, strategy: Strategy, noise_multiplier: float, clipping_norm: float) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients=1)
        self._init_fedgeo()


def wrap(strategy: Strategy, settings: DPSettings | None) -> Strategy:
    """``strategy`` in the DP wrapper ``settings`` asks for (unchanged for None).

    The wrapper expects 1 client per round until :meth:`PrivacyLedger.start` sets the
    real number, once the nodes are known. Raises ValueError (:func:`check_strategy`).
    """
    if settings is None:
        return strategy
    check_strategy(strategy)
    cls = ServerSideDP if settings.mode == "server" else ClientSideDP
    return cls(strategy, settings.noise_multiplier, settings.clipping_norm)


class PrivacyLedger:
    """The privacy spent by a run, for ``results["privacy"]``.

    Updates: each aggregated round is one sampled Gaussian release, accounted with its
    effective noise multiplier (:func:`fedgeo.privacy.effective_noise_multiplier`) and
    sample rate. Profile: each profile query is one ``profile-ldp-epsilon``-LDP release
    (seeded simulated clients repeat the same noise, so a simulation spends it once).
    """

    def __init__(self, settings: DPSettings | None, profile_epsilon: float = 0.0) -> None:
        self.settings = settings
        self.profile_epsilon = float(profile_epsilon)
        self.population = 0
        self.sample_size = 0
        self.sample_rate = 1.0
        self.sampling = "uniform"
        self.delta = 0.0
        self.server_lr = 1.0
        self.per_round: list[dict[str, Any]] = []
        self.queries = 0
        self.simulated = True

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PrivacyLedger:
        epsilon = values.get("profile-ldp-epsilon", DEFAULTS["profile-ldp-epsilon"])
        return cls(DPSettings.from_values(values), float(epsilon))

    def start(
        self,
        strategy: Strategy,
        num_nodes: int,
        *,
        seed: int,
        simulated: bool,
        previous: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the wrapper's clients per round and noise seeding once the ``num_nodes``
        nodes answered (after ``set_profiles``); continue ``previous`` (the checkpoint's
        ``results["privacy"]``) on resume."""
        previous = previous or {}
        self.population = int(num_nodes)
        self.simulated = bool(simulated)
        self.per_round = [dict(r) for r in previous.get("per_round", [])]
        self.queries = int(previous.get("profile_ldp", {}).get("queries", 0)) + 1
        if self.settings is None:
            return
        base = unwrap(strategy)
        self.sample_size = round_sample_size(
            num_nodes,
            float(getattr(base, "fraction_train", 1.0)),
            getattr(base, "min_train_nodes", 1),
        )
        if isinstance(base, FedGeo) and base.excludes and self.sample_size < num_nodes:
            # Excluded users free their slots: a diverse user's chance to take part
            # exceeds m / N, so no amplification by sampling is claimed.
            self.sample_rate, self.sampling = 1.0, "exclusion (no amplification claimed)"
        else:
            self.sample_rate, self.sampling = self.sample_size / num_nodes, "uniform"
        self.delta = self.settings.delta or default_delta(num_nodes)
        self.server_lr = float(getattr(base, "server_lr", 1.0))
        strategy.num_sampled_clients = self.sample_size
        strategy.seed = int(seed)
        strategy.seeded_noise = self.simulated

    def record_round(self, strategy: Strategy) -> dict[str, Any] | None:
        """Account the release the wrapper made in this round (None when it made none)."""
        release = getattr(strategy, "last_release", None)
        if self.settings is None or release is None:
            return None
        strategy.last_release = None
        entry = {
            **release,
            "noise_multiplier_effective": effective_noise_multiplier(
                self.settings.noise_multiplier,
                self.sample_size,
                int(release["replies"]),
                self.server_lr,
            ),
            "sample_rate": self.sample_rate,
        }
        self.per_round.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        """``results["privacy"]`` (epsilon None: no guarantee, e.g. noise multiplier 0)."""
        profile: dict[str, Any] = {"mechanism": "none", "queries": self.queries}
        if self.profile_epsilon > 0:
            releases = 1 if self.simulated else self.queries
            profile = {
                "mechanism": "laplace",
                "epsilon_per_release": self.profile_epsilon,
                "queries": self.queries,
                "epsilon": ldp_total_epsilon(self.profile_epsilon, releases),
            }
        if self.settings is None:
            return {"mechanism": "none", "epsilon": None, "profile_ldp": profile}
        steps = [(r["noise_multiplier_effective"], r["sample_rate"]) for r in self.per_round]
        epsilon, order = rdp_epsilon(steps, self.delta)
        plain, _ = rdp_epsilon([(z, 1.0) for z, _ in steps], self.delta)
        return {
            "mechanism": "gaussian",
            "clipping": self.settings.mode,
            "noise_multiplier": self.settings.noise_multiplier,
            "clipping_norm": self.settings.clipping_norm,
            "population": self.population,
            "sampled_per_round": self.sample_size,
            "sample_rate": self.sample_rate,
            "sampling": self.sampling,
            "delta": self.delta,
            "epsilon": epsilon if math.isfinite(epsilon) else None,
            "epsilon_without_sampling": plain if math.isfinite(plain) else None,
            "rdp_order": order,
            "rounds": len(self.per_round),
            "accountant": "rdp",
            "unit": "user (add or remove one client's data)",
            "covers": "shared model arrays (not metrics, not personal parameters)",
            "per_round": self.per_round,
            "profile_ldp": profile,
        }
