"""What a node message pays besides its work is cut without changing any result: the
worker's reused model copy leaves no trace of the message before."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from tiny import TINY_RUN

import client.local_training as local_training
from client.app import handle_evaluate, handle_train
from fedgeo.message_keys import SERVER_ROUND, SPLIT
from server.app import prepare
from server.run_config import RunConfig
from server.strategies.contract import to_arrayrecord

pytestmark = pytest.mark.usefixtures("task_identity")  # conftest.py


@pytest.fixture(scope="module")
def setup():
    # Enough local steps, from a random shared score, to move every parameter.
    values = {"strategy": "fedprox", "local-epochs": 3, "lr": 0.05}
    values["model-shared-score-init"] = "random"
    return prepare(RunConfig.from_mapping({**TINY_RUN, **values}))


def _context(node: int) -> Context:
    return Context(
        run_id=1, node_id=node + 1, node_config={"partition-id": node}, state=RecordDict(),
        run_config={},
    )  # fmt: skip


def _send(setup, handler, kind: str, node: int, **extra) -> RecordDict:
    config = ConfigRecord({**setup.instruction, SERVER_ROUND: 1, **extra})
    content = RecordDict({"arrays": to_arrayrecord(setup.arrays), "config": config})
    reply = handler(Message(content, node + 1, kind), _context(node))
    assert not reply.has_error(), reply.error.reason
    return reply.content


def _arrays(content: RecordDict) -> dict[str, bytes]:
    return {k: np.asarray(a.numpy()).tobytes() for k, a in content["arrays"].items()}


def test_a_reused_model_gives_what_a_fresh_copy_gives(setup) -> None:
    local_training._WORKING.clear()
    fresh_train = _arrays(_send(setup, handle_train, "train", 1))
    local_training._WORKING.clear()
    fresh_test = dict(_send(setup, handle_evaluate, "evaluate", 1, **{SPLIT: "test"})["metrics"])
    # Another client trains first on the same worker; then the same messages again.
    _send(setup, handle_train, "train", 0)
    assert _arrays(_send(setup, handle_train, "train", 1)) == fresh_train
    _send(setup, handle_train, "train", 2)
    again = dict(_send(setup, handle_evaluate, "evaluate", 1, **{SPLIT: "test"})["metrics"])
    assert again == fresh_test
    assert len(local_training._WORKING) == 1  # one working copy, reused


class _Recorder:
    """The engine's side of a grid: records what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def push_messages(self, messages):
        self.sent.extend(messages)
        return [str(i) for i in range(len(self.sent))]


def test_large_records_travel_once_and_come_back_unchanged(setup, tmp_path, monkeypatch) -> None:
    from client.app import shared_records_mod
    from experiments import shared_records
    from experiments.shared_records import SharedRecordsGrid
    from fedgeo.message_keys import SHARED_RECORDS

    monkeypatch.setattr(shared_records, "MIN_BYTES", 1)  # the tiny model counts as large

    engine = _Recorder()
    grid = SharedRecordsGrid(engine, tmp_path / "shared")
    config = ConfigRecord({**setup.instruction, SERVER_ROUND: 1, SPLIT: "test"})
    content = RecordDict({"arrays": to_arrayrecord(setup.arrays), "config": config})
    grid.push_messages([Message(content, node + 1, "evaluate") for node in range(3)])
    files = list((tmp_path / "shared").iterdir())
    assert len(files) == 1  # one file for the three messages
    for sent in engine.sent:
        assert "arrays" not in sent.content and SHARED_RECORDS in sent.content["config"]
    seen = []

    def handler(message: Message, context: Context) -> Message:
        seen.append(message.content)
        return handle_evaluate(message, context)

    reply = shared_records_mod(engine.sent[1], _context(1), handler)
    assert not reply.has_error()
    restored = seen[0]
    assert _arrays(restored) == _arrays(content)
    assert dict(restored["config"]) == dict(config)
    assert dict(reply.content["metrics"]) == dict(
        _send(setup, handle_evaluate, "evaluate", 1, **{SPLIT: "test"})["metrics"]
    )
    # A device never reads a file a server names.
    device = Context(
        run_id=1, node_id=9, node_config={"partition-id": 0, "data-path": "mine.csv"},
        state=RecordDict(), run_config={},
    )  # fmt: skip
    refused = shared_records_mod(engine.sent[0], device, handler)
    assert refused.has_error() and "simulated nodes only" in refused.error.reason
    grid.close()
    assert not (tmp_path / "shared").exists()


def test_a_damaged_array_file_is_refused(tmp_path) -> None:
    from fedgeo.array_file import StoredArray, read_arrays, write_arrays

    path = tmp_path / "a.arrays"
    write_arrays(path, [StoredArray("w", "float32", (2,), "numpy.ndarray", b"12345678")])
    assert read_arrays(path)[0].data == b"12345678"
    data = path.read_bytes()
    for damaged in (data[:-1], data + b"x", b"nonsense", data[:20]):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="a.arrays"):
            read_arrays(path)
