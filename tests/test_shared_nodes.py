"""A simulation with fewer SuperNodes than users (Flower's default of 2 for `flwr run .`):
the server shares the nodes among the users, one message in flight per node, and the
federation ends bit for bit as with one node per user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from tiny import NODES, TINY_RUN

from client.data_source import client_source
from experiments.simulate_cli import simulate
from fedgeo.message_keys import USER_PARTITION
from server.loop import NodeView
from server.run_config import RunConfig


class OneReplyPerPullGrid:
    """Answers the oldest unanswered message at each pull; notes the messages in flight."""

    def __init__(self) -> None:
        self.in_flight: list[Message] = []
        self.pushed: list[Message] = []
        self.most_in_flight_per_node = 0

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"message-{len(self.pushed)}"
            self.pushed.append(message)
            self.in_flight.append(message)
            ids.append(message.metadata.message_id)
        nodes = [int(m.metadata.dst_node_id) for m in self.in_flight]
        self.most_in_flight_per_node = max(
            self.most_in_flight_per_node, max(nodes.count(n) for n in nodes)
        )
        return ids

    def pull_messages(self, message_ids):
        if not self.in_flight:
            return []
        message = self.in_flight.pop(0)
        reply = Message(RecordDict(), reply_to=message)
        reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
        return [reply]


@pytest.fixture
def task_identity(monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def test_a_shared_node_gets_one_message_at_a_time_naming_its_user(task_identity):
    grid = OneReplyPerPullGrid()
    # Users 0..4 (stable ids 1..5) on the Flower nodes 100 and 200.
    view = NodeView(grid, {s: 100 * (1 + (s - 1) % 2) for s in range(1, 6)},
                    users={s: s - 1 for s in range(1, 6)})
    shared = RecordDict({"config": ConfigRecord({"split": "test"})})  # one content for all
    replies = view.send_and_receive([Message(shared, s, "evaluate") for s in range(1, 6)])

    assert grid.most_in_flight_per_node == 1
    sent = {int(m.metadata.dst_node_id): [] for m in grid.pushed}
    for message in grid.pushed:
        sent[int(message.metadata.dst_node_id)].append(int(message.content["config"][USER_PARTITION]))
    assert sent == {100: [0, 2, 4], 200: [1, 3]}
    assert all(m.content["config"]["split"] == "test" for m in grid.pushed)
    assert USER_PARTITION not in shared["config"]  # the caller's content is left alone
    # Replies come back under the users' stable ids, in order.
    assert [int(r.metadata.src_node_id) for r in replies] == [1, 2, 3, 4, 5]


def test_a_simulated_node_serves_the_user_the_instruction_names():
    spec = RunConfig.from_mapping(TINY_RUN).data_spec().to_json()
    own = client_source({"partition-id": 0}, {"data-spec": spec}, node_id=9)
    named = client_source({"partition-id": 0}, {"data-spec": spec, USER_PARTITION: 5}, node_id=9)
    assert (own.key, named.key) == (0, 5)
    assert named.simulated and named.data.user.user_id != own.data.user.user_id
    with pytest.raises(ValueError, match="partition id 8"):
        client_source({"partition-id": 0}, {"data-spec": spec, USER_PARTITION: NODES}, node_id=9)


def test_a_device_refuses_an_instruction_for_another_user(tmp_path):
    spec = RunConfig.from_mapping(TINY_RUN).data_spec().to_json()
    node_config = {"data-path": str(tmp_path / "mine.csv"), "places-path": "places.csv"}
    with pytest.raises(ValueError, match="for simulated nodes"):
        client_source(node_config, {"data-spec": spec, USER_PARTITION: 1}, node_id=9)


def test_fewer_nodes_than_users_end_as_one_node_per_user(tmp_path: Path):
    """SCAFFOLD keeps each user's control variate in its node's context, and the
    population prior's secure sum a session per user: both stay apart on a shared node
    (with model selection, whose round-0 validation needs the population prior)."""

    def settings(out: Path) -> dict:
        return {**TINY_RUN, "strategy": "scaffold", "num-rounds": 2, "fraction-train": 0.5,
                "fraction-evaluate": 0.5, "model-population-prior": True,
                "population-refresh": 1, "population-cohort-size": 4,
                "keep-best-model": True, "out-dir": str(out), "research-mode": True}

    [alone] = simulate([settings(tmp_path / "alone")], NODES, 2, progress=False)
    [shared] = simulate([settings(tmp_path / "shared")], 3, 2, progress=False)
    assert shared["nodes"]["federated"] == alone["nodes"]["federated"] == NODES
    assert shared["test"] == alone["test"]
    # keep-best-model validates the starting model with the first population prior
    assert [e["round"] for e in shared["evaluation"]] == [0, 1, 2]
    assert shared["evaluation"] == alone["evaluation"]
    assert json.dumps([r.get("evaluate") for r in shared["rounds"]]) == json.dumps(
        [r.get("evaluate") for r in alone["rounds"]]
    )
    assert (tmp_path / "shared" / "predictions.csv").read_bytes() == (
        tmp_path / "alone" / "predictions.csv"
    ).read_bytes()
