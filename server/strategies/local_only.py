"""Local-only training: the no-federation baseline.

Every instruction (train and evaluate) carries ``"local-only" = 1``. A client that sees
it trains and evaluates its *own full model* (shared and personal parameters), kept on
the device across rounds; it ignores the global arrays except to initialize its model
the first time, and its train reply needs only a MetricRecord (``num-examples``,
``train-loss``; an ArrayRecord, if sent, is ignored). The server never changes the
global arrays: ``aggregate_train`` returns the arrays it last sent. Federated evaluation
therefore measures each client's local model on its own test samples.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from server.strategies.contract import LOCAL_ONLY


class LocalOnly(FedAvg):
    """Clients train only for themselves; the server just aggregates metrics."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[LOCAL_ONLY] = 1
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[LOCAL_ONLY] = 1
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The global arrays unchanged, and the example-weighted training metrics."""
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return self.current_arrays, None
        contents = [msg.content for msg in valid]
        validate_message_reply_consistency(contents, self.weighted_by_key, check_arrayrecord=False)
        return self.current_arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
