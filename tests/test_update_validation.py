"""Client updates are validated before aggregation; bad ones are rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.validation import split_valid, update_problem

REFERENCE = {"w": np.zeros((2, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages need the ServerApp's identity, which a real run sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _reply(node: int, arrays: dict[str, np.ndarray] | None, **extra: ArrayRecord) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord()}), node, "train")
    records: dict = {"metrics": MetricRecord({"num-examples": 3})}
    if arrays is not None:
        records["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    records.update(extra)
    return Message(RecordDict(records), reply_to=instruction)


def _good(scale: float = 0.1) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, scale) for k, v in REFERENCE.items()}


def test_a_well_formed_update_passes():
    assert update_problem(_reply(2, _good()), REFERENCE) is None


def test_a_reply_without_arrays_is_left_to_the_strategy():
    assert update_problem(_reply(2, None), REFERENCE) is None


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"w": np.zeros((2, 2), np.float32)}, "missing ['b']"),
        ({**_good(), "extra": np.zeros(1, np.float32)}, "unexpected ['extra']"),
        ({**_good(), "b": np.zeros(3, np.float32)}, "shape"),
        ({**_good(), "b": np.zeros(2, np.int64)}, "dtype"),
        ({**_good(), "w": np.array([[np.nan, 0], [0, 0]], np.float32)}, "NaN or Inf"),
        ({**_good(), "b": np.array([np.inf, 0], np.float32)}, "NaN or Inf"),
    ],
)
def test_malformed_updates_are_rejected_with_a_reason(arrays, reason):
    problem = update_problem(_reply(2, arrays), REFERENCE)
    assert problem is not None and reason in problem


def test_norm_bound_rejects_scaled_updates_only_when_set():
    scaled = _reply(3, _good(scale=100.0))  # norm 100 * sqrt(6) from the reference
    assert update_problem(scaled, REFERENCE) is None
    assert "exceeds the bound" in update_problem(scaled, REFERENCE, max_update_norm=10.0)
    assert update_problem(_reply(3, _good(scale=1.0)), REFERENCE, max_update_norm=10.0) is None


def test_other_records_must_be_finite():
    bad = ArrayRecord({"w": Array(np.array([np.nan], np.float32))})
    assert "control-delta" in update_problem(
        _reply(2, _good(), **{"control-delta": bad}), REFERENCE
    )


def test_split_valid_keeps_good_replies_and_names_rejected_nodes():
    replies = [_reply(2, _good()), _reply(5, {**_good(), "b": np.zeros(3, np.float32)})]
    valid, rejected = split_valid(replies, REFERENCE)
    assert valid == [replies[0]]
    assert len(rejected) == 1 and rejected[0].startswith("node 5:")
