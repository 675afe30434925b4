"""Validate client updates before aggregation: a broken or hostile update is rejected
and counted, never averaged.

A train reply's ``arrays`` record must have exactly the global model's keys, shapes and
floating dtype kind, hold only finite values, and (when ``max_update_norm > 0``) move the
model by at most that Euclidean norm. Every other array record in the reply (e.g.
SCAFFOLD's ``control-delta``) must hold finite values. A reply without ``arrays``
(local-only replies carry metrics only) is left to the strategy, which rejects it if it
needs arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, Message

from fedgeo.message_keys import ARRAYS as ARRAYS_KEY


def update_problem(
    reply: Message, reference: Mapping[str, np.ndarray], max_update_norm: float = 0.0
) -> str | None:
    """Why ``reply`` must not be aggregated, or None when it is valid."""
    records = reply.content.array_records
    if ARRAYS_KEY not in records:  # nothing to average (local-only replies send metrics only)
        return _nonfinite_record(records)
    arrays = records[ARRAYS_KEY]
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        return f"keys differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    squared = 0.0
    for key, expected in reference.items():
        value = arrays[key].numpy()
        if value.shape != expected.shape:
            return f"'{key}' has shape {value.shape}, expected {expected.shape}"
        if value.dtype.kind != expected.dtype.kind:
            return f"'{key}' has dtype {value.dtype}, expected {expected.dtype}"
        if value.dtype.kind == "f":
            if not np.all(np.isfinite(value)):
                return f"'{key}' holds NaN or Inf"
            squared += float(np.sum((value.astype(np.float64) - expected) ** 2))
    if max_update_norm > 0 and np.sqrt(squared) > max_update_norm:
        return f"update norm {np.sqrt(squared):.4g} exceeds the bound {max_update_norm:g}"
    return _nonfinite_record(records)


def _nonfinite_record(records: Mapping[str, ArrayRecord]) -> str | None:
    for name, record in records.items():
        if name != ARRAYS_KEY and not _finite(record):
            return f"record '{name}' holds NaN or Inf"
    return None


def _finite(record: ArrayRecord) -> bool:
    for array in record.values():
        value = array.numpy()
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            return False
    return True


def split_valid(
    replies: list[Message], reference: Mapping[str, np.ndarray], max_update_norm: float = 0.0
) -> tuple[list[Message], list[str]]:
    """(valid replies, one reason per rejected reply naming its node)."""
    valid, rejected = [], []
    for reply in replies:
        problem = update_problem(reply, reference, max_update_norm)
        if problem is None:
            valid.append(reply)
        else:
            rejected.append(f"node {reply.metadata.src_node_id}: {problem}")
    return valid, rejected
