"""Test doubles shared by several test files (pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.serverapp import Grid


class NodesGrid(Grid):
    """A Grid that only knows its node ids (strategies only ask for those); the rest
    of Flower's abstract Grid interface is never called by the tests that use it."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._nodes = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def set_run(self, run) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover - unused
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover - unused
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover - unused
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - unused
        raise NotImplementedError
