"""SCAFFOLD (Karimireddy et al., ICML 2020): stochastic controlled averaging.

Server side of option II. The server keeps a control variate ``c`` (one array per shared
array, float64, zeros at the start) and sends it with every train instruction as the
ArrayRecord ``"server-control"``. Each client corrects its gradients with ``c - c_i`` and
replies with its trained arrays ``"arrays"`` and its control change ``"control-delta"``
(``c_i+ - c_i``; see ``client.algorithms``). With ``S`` the clients that replied and ``N``
the nodes available when the round was configured:

    x <- x + eta_g * (1/|S|) sum_{i in S} (y_i - x)
    c <- c + (|S| / N) * (1/|S|) sum_{i in S} Δc_i

Both means are uniform over the clients, as in the paper (not weighted by examples);
the training metrics are still example-weighted like FedAvg's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from server.strategies.contract import (
    CONTROL_DELTA,
    SERVER_CONTROL,
    as_dtype,
    to_arrayrecord,
    to_numpy,
    valid_train_replies,
)


def control_record(
    control: dict[str, np.ndarray] | None, current: Mapping[str, np.ndarray], who: str
) -> tuple[dict[str, np.ndarray], ArrayRecord]:
    """The control variate ``c`` (float64 zeros the first time) and its ArrayRecord in the
    dtypes of the global arrays ``current``, to send as ``"server-control"``. Used by
    SCAFFOLD and by FedGeo's control variates (``who`` names the strategy in errors)."""
    if control is None:
        control = {k: np.zeros(v.shape, dtype=np.float64) for k, v in current.items()}
    elif set(control) != set(current):
        raise AggregationError(
            reason=f"{who}: control keys {sorted(control)} differ from the global arrays "
            f"{sorted(current)}"
        )
    record = to_arrayrecord(
        {
            k: control[k].astype(v.dtype if np.issubdtype(v.dtype, np.inexact) else "f4")
            for k, v in current.items()
        }
    )
    return control, record


def control_delta(
    control: Mapping[str, np.ndarray], node_id: int, record: object, who: str
) -> dict[str, np.ndarray]:
    """A reply's ``"control-delta"`` record as float64 arrays, checked against ``c``."""
    if not isinstance(record, ArrayRecord):
        raise InconsistentMessageReplies(
            reason=f"{who}: reply from node {node_id} has no ArrayRecord '{CONTROL_DELTA}'"
        )
    delta = {k: v.astype(np.float64) for k, v in to_numpy(record).items()}
    for key, value in delta.items():
        if key not in control or value.shape != control[key].shape:
            raise InconsistentMessageReplies(
                reason=f"{who}: node {node_id} sent '{CONTROL_DELTA}' entry '{key}' "
                f"with shape {value.shape}, which matches no control array"
            )
    return delta


def update_control(
    control: dict[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]], available: int
) -> None:
    """SCAFFOLD's server control step, in place: with ``k = len(deltas)`` and ``n =
    max(available, k)``, ``c <- c + (k / n) * (1/k) sum_i Δc_i``."""
    k = len(deltas)
    if k == 0:
        return
    fraction = k / max(available, k)
    for key in control:
        total = sum(d[key] for d in deltas if key in d)
        if isinstance(total, np.ndarray):
            control[key] = control[key] + fraction * total / k


class Scaffold(FedAvg):
    """SCAFFOLD with server learning rate ``server_lr`` (eta_g).

    Parameters are FedAvg's plus ``server_lr`` (default 1.0: the new model is the
    uniform mean of the client models). State across rounds: ``control`` (c).
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
        server_lr: float = 1.0,
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
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = float(server_lr)
        self.control: dict[str, np.ndarray] | None = None
        self.current_arrays: dict[str, np.ndarray] | None = None
        self.num_available_nodes = 0

    def summary(self) -> None:
        log(INFO, "\t├──> SCAFFOLD settings:")
        log(INFO, "\t│\t└── Server learning rate: %s", self.server_lr)
        super().summary()

    def server_control(self, arrays: ArrayRecord) -> ArrayRecord:
        """The control variate ``c`` as an ArrayRecord in the dtypes of ``arrays``
        (zeros the first time)."""
        self.control, record = control_record(self.control, to_numpy(arrays), "SCAFFOLD")
        return record

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling; every instruction also carries ``"server-control"``."""
        control = self.server_control(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.current_arrays = to_numpy(arrays)
        self.num_available_nodes = len(list(grid.get_node_ids()))
        for message in messages:
            message.content[SERVER_CONTROL] = control
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Update the model and ``c`` from the replies (see the module docstring)."""
        valid = valid_train_replies(self, replies, extra_keys=(CONTROL_DELTA,))
        if not valid:
            return None, None
        if self.current_arrays is None or self.control is None:
            raise AggregationError(reason="SCAFFOLD: configure_train was not called first")
        x = self.current_arrays
        if set(valid[0].arrays.keys()) != set(x):
            raise AggregationError(
                reason=f"SCAFFOLD: reply arrays {sorted(valid[0].arrays.keys())} differ from "
                f"the global arrays {sorted(x)}"
            )
        k = len(valid)
        new_arrays: dict[str, np.ndarray] = {}
        for key, x_key in x.items():
            x64 = x_key.astype(np.float64)
            mean_delta = sum(r.arrays[key].numpy().astype(np.float64) - x64 for r in valid) / k
            new_arrays[key] = as_dtype(x64 + self.server_lr * mean_delta, x_key.dtype)

        deltas = [
            control_delta(self.control, r.node_id, r.extras.get(CONTROL_DELTA), "SCAFFOLD")
            for r in valid
        ]
        update_control(self.control, deltas, self.num_available_nodes)

        metrics = self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)
        self.current_arrays = new_arrays
        return to_arrayrecord(new_arrays), metrics
