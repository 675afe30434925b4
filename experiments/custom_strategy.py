"""A custom strategy in one short file: coordinate-wise trimmed mean of the shared arrays.

Use it without touching FedGeo's code by naming its import path as the strategy, e.g.
``strategy = "experiments.custom_strategy:TrimmedMean"`` with ``trim-fraction = 0.2`` in
the run config (``server.strategies.build_strategy`` passes every constructor argument
whose dashed name is in the run config). See docs/strategies.md.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from scipy.stats import trim_mean


class TrimmedMean(FedAvg):
    """FedAvg whose model update is the coordinate-wise trimmed mean of the clients'
    arrays: for each scalar, the lowest and highest ``trim_fraction`` of the client
    values are dropped and the rest averaged (unweighted). Robust to a few clients with
    extreme updates; ``trim_fraction=0`` is the unweighted mean."""

    def __init__(self, *, trim_fraction: float = 0.1, **fedavg_args) -> None:
        super().__init__(**fedavg_args)
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = trim_fraction

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Flower's checks: drop error replies, require one ArrayRecord + one MetricRecord.
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        client_arrays = [next(iter(c.array_records.values())) for c in contents]
        arrays = ArrayRecord()
        for key in client_arrays[0]:
            stacked = np.stack([record[key].numpy() for record in client_arrays])
            trimmed = trim_mean(stacked, self.trim_fraction, axis=0)
            arrays[key] = Array(np.asarray(trimmed, dtype=stacked.dtype))
        # Training metrics: FedAvg's example-weighted average.
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
