"""FedDyn (Acar et al., ICLR 2021): federated learning with dynamic regularization.

Server side. Each train instruction carries ``"feddyn-alpha"`` in its config; clients
minimize ``L_i(theta) - <g_i, theta> + alpha/2 ||theta - theta_prev||^2`` and keep their
state ``g_i`` (``client.algorithms``). The server keeps ``h`` (float64, zeros at the
start); with ``S`` the clients that replied and ``N`` the nodes available when the round
was configured:

    h     <- h - alpha * (1/N) * sum_{i in S} (theta_i - theta_prev)
    theta <- (1/|S|) * sum_{i in S} theta_i - h / alpha

The mean is uniform over the clients as in the paper; training metrics stay
example-weighted like FedAvg's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from server.strategies.contract import (
    FEDDYN_ALPHA,
    array_views,
    as_dtype,
    to_arrayrecord,
    to_numpy,
    valid_train_replies,
)


def update_h(
    h: dict[str, np.ndarray],
    prev: Mapping[str, np.ndarray],
    clients: Sequence[Mapping[str, np.ndarray]],
    alpha: float,
    available: int,
    who: str,
) -> dict[str, np.ndarray]:
    """FedDyn's server state step, in place: with ``k = len(clients)`` and ``n =
    max(available, k)``, ``h <- h - alpha * sum_i (theta_i - theta_prev) / n``. Returns
    the clients' float64 mean per array. Used by FedDyn and by FedGeo's dynamic
    correction (``who`` names the strategy in the error for mismatched arrays)."""
    if any(set(arrays) != set(prev) for arrays in clients) or set(h) != set(prev):
        raise AggregationError(
            reason=f"{who}: reply arrays differ from the global arrays {sorted(prev)}"
        )
    k = len(clients)
    n = max(available, k)
    means = {}
    for key, prev_key in prev.items():
        total = sum(arrays[key].astype(np.float64) for arrays in clients)
        h[key] = h[key] - alpha * (total - k * prev_key.astype(np.float64)) / n
        means[key] = total / k
    return means


class FedDyn(FedAvg):
    """FedDyn with regularization weight ``alpha`` (> 0). State across rounds: ``h``."""

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
        alpha: float = 0.01,
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
        if not alpha > 0:
            raise ValueError(f"FedDyn alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.h: dict[str, np.ndarray] | None = None
        self.current_arrays: dict[str, np.ndarray] | None = None
        self.num_available_nodes = 0

    def summary(self) -> None:
        log(INFO, "\t├──> FedDyn settings:")
        log(INFO, "\t│\t└── alpha: %s", self.alpha)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling with ``"feddyn-alpha"`` added to the config."""
        config[FEDDYN_ALPHA] = self.alpha
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.current_arrays = to_numpy(arrays)
        self.num_available_nodes = len(list(grid.get_node_ids()))
        if self.h is None:
            self.h = {
                k: np.zeros(v.shape, dtype=np.float64) for k, v in self.current_arrays.items()
            }
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Update ``h`` and the model from the replies (see the module docstring)."""
        valid = valid_train_replies(self, replies)
        if not valid:
            return None, None
        if self.current_arrays is None or self.h is None:
            raise AggregationError(reason="FedDyn: configure_train was not called first")
        prev = self.current_arrays
        clients = [array_views(r.arrays) for r in valid]
        means = update_h(self.h, prev, clients, self.alpha, self.num_available_nodes, "FedDyn")
        new_arrays = {
            key: as_dtype(means[key] - self.h[key] / self.alpha, prev_key.dtype)
            for key, prev_key in prev.items()
        }
        metrics = self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)
        self.current_arrays = new_arrays
        return to_arrayrecord(new_arrays), metrics
