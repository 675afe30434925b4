"""A client whose data is too small to train reports that and is skipped; the round goes on.

"Too small" is one check-in (no trajectory of two), or no training sample after the
protocol. Such data raises :class:`~fedgeo.data.errors.TooLittleData`; the ClientApp turns
it into an error reply of code ``TOO_LITTLE_DATA_CODE`` whose reason says so (without
the device's file path), and the server leaves the client out and counts it as
``too_little_data``, not as a failure. The federation test runs the real server loop and
the real ClientApp handlers in this process (no Ray): a grid delivers each message
straight to the handlers of simulated nodes, of one device holding a single check-in and
of one device whose data shrinks to a single check-in after it joined.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client.app as client_app
from client.data_source import ClientSource, client_source
from fedgeo.data.errors import TOO_LITTLE_DATA_CODE, DataError, TooLittleData
from fedgeo.data.partition import client_data
from fedgeo.data.protocol import ProtocolConfig, preprocess
from server.app import prepare, simulation_dataset
from server.loop import Federation
from server.run_config import RunConfig
from server.strategies.contract import to_arrayrecord

USERS = 6
TINY = {
    "synthetic-num-users": USERS,
    "synthetic-num-places": 60,
    "synthetic-days": 14,
    "num-rounds": 2,
    "local-epochs": 1,
    "batch-size": 32,
    "model-embedding-dim": 8,
    "model-hidden-dim": 8,
    "model-window": 6,
    "prior-k": 4,
    "strategy": "fedavg",
    "node-wait": 5.0,
}
DEVICE_NODE = 999
SHRINKING_NODE = 998
HANDLERS = {
    "query": client_app.handle_query,
    "train": client_app.handle_train,
    "evaluate": client_app.handle_evaluate,
}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages need the ServerApp's identity, which a real run sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def table(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "location_id", "latitude", "longitude", "t"])
    return frame.assign(timestamp=frame.pop("t").astype("int64"))


def config(tmp_path: Path) -> RunConfig:
    return RunConfig.from_mapping({**TINY, "out-dir": str(tmp_path / "run")})


def write_device_files(
    tmp_path: Path, cfg: RunConfig, checkins: int, name: str = "mine.csv"
) -> dict[str, str]:
    """The public place table and a device file ``name`` of ``checkins`` check-ins an
    hour apart (node config of a device)."""
    places = simulation_dataset(cfg).places
    (tmp_path / "places.csv").write_text(
        "location_id,latitude,longitude\n"
        + "".join(
            f"{pid},{float(lat)!r},{float(lon)!r}\n"
            for pid, lat, lon in zip(places.ids, places.latitude, places.longitude, strict=True)
        )
    )
    rows = "".join(
        f"u7,{places.ids[i]},{float(places.latitude[i])!r},{float(places.longitude[i])!r},"
        f"{1_700_000_000 + 3600 * i}\n"
        for i in range(checkins)
    )
    (tmp_path / name).write_text("user_id,location_id,latitude,longitude,timestamp\n" + rows)
    return {"data-path": str(tmp_path / name), "places-path": str(tmp_path / "places.csv")}


def instruction(cfg: RunConfig, kind: str, node: int) -> Message:
    setup = prepare(cfg)
    content = RecordDict({"config": Federation(None, setup).instruction(1)})
    if kind != "query":
        content["arrays"] = to_arrayrecord(setup.arrays)
    message = Message(content, node, kind)
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return message


def context(node: int, node_config: dict) -> Context:
    return Context(
        run_id=1, node_id=node, node_config=node_config, state=RecordDict(), run_config={}
    )


# --- the library: what "too little data" is ---------------------------------------------


def test_one_checkin_is_too_little_data():
    with pytest.raises(TooLittleData, match="no trajectory with two or more check-ins") as err:
        preprocess(table([("u", "p", 1.0, 2.0, 0)]), name="mine.csv")
    assert isinstance(err.value, DataError)  # the CLI's exit status 2 and one line
    assert str(err.value) == (
        "mine.csv: too little data to train: no trajectory with two or more check-ins "
        "(1 check-in, 1 user)"
    )


def test_no_training_trajectory_is_too_little_data_not_a_crash():
    # Two one-day trajectories; train_frac 0.2 rounds to no training trajectory at all
    # (this used to end in an IndexError inside the protocol).
    rows = [("u", "a", 1.0, 2.0, 0), ("u", "b", 1.0, 2.1, 60), ("u", "a", 1.0, 2.0, 10**6)]
    rows.append(("u", "b", 1.0, 2.1, 10**6 + 60))
    with pytest.raises(TooLittleData, match="none of the 2 trajectories is for training"):
        preprocess(table(rows), ProtocolConfig(train_frac=0.2, val_frac=0.4))


# --- the client: reports it in an error reply -------------------------------------------


def test_train_without_training_samples_replies_too_little_data(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    data = client_data(simulation_dataset(cfg), 0)
    user = dataclasses.replace(data.user, train=np.zeros(0, dtype=np.int64))
    source = ClientSource(dataclasses.replace(data, user=user), True, 0, "too-small")
    monkeypatch.setattr(client_app, "_source", lambda message, context: source)
    message = instruction(cfg, "train", 5)
    reply = client_app.handle_train(message, context(5, {"partition-id": 0}))
    assert reply.has_error()
    assert reply.error.code == TOO_LITTLE_DATA_CODE
    assert reply.error.reason == (
        f"fedgeo client: too little data to train: 0 training samples ({len(user)} check-ins)"
    )
    assert reply.metadata.reply_to_message_id == message.metadata.message_id
    # Any other bad data is still an ordinary failure.
    monkeypatch.setattr(
        client_app, "_source", lambda m, c: (_ for _ in ()).throw(DataError("broken"))
    )
    other = client_app.handle_train(instruction(cfg, "train", 5), context(5, {}))
    assert other.error.code != TOO_LITTLE_DATA_CODE and "broken" in other.error.reason


@pytest.mark.parametrize("kind", ["query", "train", "evaluate"])
def test_device_with_one_checkin_reports_it_for_every_message(tmp_path, kind):
    cfg = config(tmp_path)
    node_config = write_device_files(tmp_path, cfg, checkins=1)
    reply = HANDLERS[kind](instruction(cfg, kind, DEVICE_NODE), context(DEVICE_NODE, node_config))
    assert reply.has_error() and reply.error.code == TOO_LITTLE_DATA_CODE
    assert reply.error.reason.startswith("fedgeo client: too little data to train: ")
    assert "(1 check-in, 1 user)" in reply.error.reason
    assert str(tmp_path) not in reply.error.reason  # the device's paths stay on the device


def test_device_with_two_checkins_trains(tmp_path):
    cfg = config(tmp_path)
    node_config = write_device_files(tmp_path, cfg, checkins=2)
    spec = {"data-spec": cfg.data_spec().to_json()}
    assert len(client_source(node_config, spec, 1).data.user.train) == 1
    reply = client_app.handle_train(
        instruction(cfg, "train", DEVICE_NODE), context(DEVICE_NODE, node_config)
    )
    assert not reply.has_error() and reply.content["metrics"]["num-examples"] == 1


# --- the server: a federation with a too-small client completes --------------------------


class LocalGrid:
    """A grid whose nodes run in this process: each pushed message is handled at once
    by the ClientApp handler of its type, with the destination node's context (its
    ``later`` context, if any, for every message but the query)."""

    def __init__(self, contexts: dict[int, Context], later: dict[int, Context]) -> None:
        self.contexts = contexts
        self.later = later
        self.replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = int(message.metadata.dst_node_id)
            kind = message.metadata.message_type
            node_context = self.contexts[node]
            if kind != "query":
                node_context = self.later.get(node, node_context)
            self.replies[message.metadata.message_id] = HANDLERS[kind](message, node_context)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def test_federation_counts_too_small_clients_apart_from_failures(tmp_path, caplog):
    cfg = config(tmp_path)
    contexts = {100 + i: context(100 + i, {"partition-id": i}) for i in range(USERS)}
    contexts[DEVICE_NODE] = context(DEVICE_NODE, write_device_files(tmp_path, cfg, checkins=1))
    # Two check-ins at the query, one from then on (the user deleted their history).
    joined = write_device_files(tmp_path, cfg, checkins=2, name="joined.csv")
    shrunk = write_device_files(tmp_path, cfg, checkins=1, name="shrunk.csv")
    contexts[SHRINKING_NODE] = context(SHRINKING_NODE, joined)
    later = {SHRINKING_NODE: context(SHRINKING_NODE, shrunk)}
    with caplog.at_level(logging.INFO, logger="fedgeo.server"):
        results = Federation(LocalGrid(contexts, later), prepare(cfg)).run()
    # The one-check-in device is left out at the query, counted apart from failures.
    assert results["nodes"] == {"federated": USERS + 1, "query_failures": 0, "too_little_data": 1}
    # The shrunk device is sampled every round: skipped, not a failure; the round goes on.
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert record["participation"]["sampled"] == USERS + 1
        assert record["replies"] == USERS and record["too_little_data"] == 1
        assert record["failures"] == 0 and record["errors"] == []
        assert record["skipped"] is None and record["evaluate"] is not None
    assert results["test"]["samples"] > 0 and results["test_failures"] == 0
    written = json.loads((cfg.out_dir / "results.json").read_text())
    assert [r["too_little_data"] for r in written["rounds"]] == [1, 1]
    assert written["nodes"]["too_little_data"] == 1
    # The server logs them at INFO, with the client's reason, never as a warning.
    reason = "fedgeo client: too little data to train"
    server = [r for r in caplog.records if r.name == "fedgeo.server"]
    for node, times in ((DEVICE_NODE, 1), (SHRINKING_NODE, 3)):  # 2 rounds + final test
        logged = [r for r in server if f"node {node}: {reason}" in r.getMessage()]
        assert [r.levelno for r in logged] == [logging.INFO] * times


def test_federation_steps_leave_time_spent_suspended_out_of_the_total(tmp_path):
    """``Federation.steps`` (what interleaved runs use) yields after node discovery and
    after each round; time spent suspended is not this federation's time."""
    cfg = config(tmp_path)
    contexts = {100 + i: context(100 + i, {"partition-id": i}) for i in range(USERS)}
    federation = Federation(LocalGrid(contexts, {}), prepare(cfg))
    pause_s, start = 1.0, time.perf_counter()
    seen = [(len(step["rounds"]), "test" in step) for step in _slowly(federation.steps(), pause_s)]
    wall = time.perf_counter() - start
    # Discovery, each round, then the final test.
    assert seen == [(0, False), (1, False), (2, False), (2, True)]
    total = json.loads((cfg.out_dir / "results.json").read_text())["timings_s"]["total"]
    assert total < wall - 0.9 * pause_s * (len(seen) - 1)


def _slowly(steps, pause_s: float):
    for step in steps:
        yield step
        time.sleep(pause_s)
