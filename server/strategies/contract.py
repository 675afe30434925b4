"""The FedGeo message contract: record/config keys and reply plumbing shared by strategies.

The client side (``client.algorithms``) repeats the key strings because client and server
never import each other; ``tests/test_client_algorithms.py`` checks that both agree.
See docs/strategies.md for which strategy sends and expects which key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

if TYPE_CHECKING:
    from flwr.serverapp.strategy import FedAvg

from fedgeo.message_keys import (  # noqa: F401 (re-exported)
    ARRAYS,
    CONFIG,
    CONTROL_DELTA,
    FEDDYN_ALPHA,
    LOCAL_ONLY,
    METRICS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    SERVER_CONTROL,
    SERVER_ROUND,
    TRAIN_LOSS,
)
from fedgeo.npy import npy_view


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as a dict name -> ndarray (key order kept)."""
    return {key: array.numpy() for key, array in record.items()}


def array_views(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Like :func:`to_numpy`, but each array is a read-only view of the record's bytes
    (no copy, no fresh allocation) when it is a C-ordered ``.npy`` payload, as Flower's
    ``Array.from_numpy_ndarray`` writes; any other array is loaded by ``Array.numpy``.
    For aggregators that only read the clients' models (a round of 100 NYC models is
    190 MB that would otherwise be allocated and copied again every round)."""
    return {key: _view(array) for key, array in record.items()}


def _view(array: Array) -> np.ndarray:
    if array.stype != "numpy.ndarray":
        return array.numpy()  # raises Flower's TypeError
    view = npy_view(array.data)
    return view if view is not None else array.numpy()


def to_arrayrecord(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """A dict name -> ndarray as an ArrayRecord (key order kept; C order). The server's
    one converter; :func:`to_numpy` is its inverse."""
    return ArrayRecord({key: Array(np.asarray(value, order="C")) for key, value in arrays.items()})


@dataclass
class TrainReply:
    """One valid train reply, with the strategy-specific extra records split off."""

    node_id: int
    content: RecordDict
    """The reply without the extra records: one ArrayRecord and one MetricRecord."""
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def arrays(self) -> ArrayRecord:
        """The reply's (only) ArrayRecord: the client's trained shared arrays."""
        return next(iter(self.content.array_records.values()))

    def weight(self, key: str = NUM_EXAMPLES) -> float:
        """The weight the reply's MetricRecord carries under ``key``."""
        return float(next(iter(self.content.metric_records.values()))[key])


def valid_train_replies(
    strategy: FedAvg, replies: Iterable[Message], extra_keys: tuple[str, ...] = ()
) -> list[TrainReply]:
    """The replies without errors, extra records split off, checked like Flower's FedAvg.

    Error replies are logged and dropped (``FedAvg._check_and_log_replies``); the rest
    must, once ``extra_keys`` are removed, hold exactly one ArrayRecord with the same keys
    and one MetricRecord with the weighting key (``InconsistentMessageReplies`` otherwise).
    """
    valid, _ = strategy._check_and_log_replies(replies, is_train=True, validate=False)
    out: list[TrainReply] = []
    for msg in valid:
        content = msg.content
        stripped = RecordDict({k: v for k, v in content.items() if k not in extra_keys})
        extras = {k: content[k] for k in extra_keys if k in content}
        out.append(TrainReply(int(msg.metadata.src_node_id), stripped, extras))
    if out:
        validate_message_reply_consistency(
            [r.content for r in out], strategy.weighted_by_key, check_arrayrecord=True
        )
    return out


def as_dtype(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``value`` (float64 arithmetic result) cast to ``dtype``; integer dtypes are rounded."""
    if not np.issubdtype(dtype, np.inexact):
        value = np.rint(value)
    return np.array(np.asarray(value), dtype=dtype, order="C")  # keeps 0-d shapes
