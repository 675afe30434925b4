"""Node-by-node steps report their progress (server.loop.NodeView's on_progress hook)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.loop import NodeView


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


class TwoPullGrid:
    """Answers half of the messages at the first pull and the rest at the second."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.pulls = 0

    def push_messages(self, messages):
        self.sent, self.pulls = list(messages), 0
        for i, message in enumerate(self.sent):  # what a real grid does on push
            message.metadata.__dict__["_message_id"] = f"message-{i}"
        return [m.metadata.message_id for m in self.sent]

    def pull_messages(self, message_ids):
        self.pulls += 1
        half = len(self.sent) // 2
        batch = self.sent[:half] if self.pulls == 1 else self.sent[half:]
        return [Message(RecordDict(), reply_to=m) for m in batch]


def test_send_and_receive_reports_replies_under_its_label():
    calls = []
    view = NodeView(
        TwoPullGrid(), {n: n for n in range(1, 7)}, on_progress=lambda *a: calls.append(a)
    )
    messages = [Message(RecordDict({"config": ConfigRecord({})}), n, "query") for n in range(1, 7)]
    replies = view.send_and_receive(messages, label="profile query")
    assert len(replies) == 6
    assert calls == [("profile query", 0, 6), ("profile query", 3, 6), ("profile query", 6, 6)]
    calls.clear()
    view.send_and_receive(
        [Message(RecordDict({"config": ConfigRecord({})}), n, "query") for n in range(1, 7)]
    )
    assert calls == []  # no label: a training round has its own progress
