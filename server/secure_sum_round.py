"""Secure summation over Flower messages: the four stages of :mod:`fedgeo.secure_sum`
for one or more cohorts of nodes, all cohorts in step (one round trip per stage).

The population prior (:mod:`server.population_round`) and secure mean aggregation of model
updates (``secure-aggregation``, :mod:`server.loop`) both run it. Every stage is a
``query.population`` message whose config names the ``stage``, the ``session`` (the
client keeps its secrets under that name) and the cohort's public settings; a client's
inputs travel in the ConfigRecord ``stage-in``, its outputs in ``stage-out`` (the masked
vector in the ArrayRecord ``masked``). A node that fails a stage, or whose reply does not
parse, is left out from then on (a dropout); a cohort that cannot finish is left out of the
sum, and :class:`SecureSumOutcome` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedgeo.message_keys import (
    CONFIG,
    MASKED,
    SECURE_SUM_ACTION,
    SECURE_SUM_CONFIG,
    SESSION,
    STAGE,
    STAGE_IN,
    STAGE_OUT,
)
from fedgeo.secure_sum import SecureSumConfig, SecureSumError, ServerSession

MESSAGE_TYPE = f"query.{SECURE_SUM_ACTION}"

SendAndReceive = Callable[[list[Message]], list[Message]]


@dataclass
class SecureSumOutcome:
    """What one secure summation gave."""

    total: np.ndarray | None
    """The sum of the summed nodes' vectors (None when no cohort finished)."""
    summed: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    """Nodes that shared their secrets but sent no (valid) masked vector."""
    problems: list[str] = field(default_factory=list)
    cohorts: int = 0
    cohorts_failed: int = 0

    def counts(self) -> dict[str, Any]:
        return {
            "cohorts": self.cohorts,
            "cohorts_failed": self.cohorts_failed,
            "dropped": len(self.dropped),
            "failures": len(self.problems),
            "errors": self.problems[:5],
        }


def run_secure_sum(
    send_and_receive: SendAndReceive,
    groups: Sequence[Sequence[int]],
    length: int,
    *,
    neighbours: int,
    base: dict[str, Any],
    session: str,
    seed: Sequence[int],
    setup_replies: dict[int, Message] | None = None,
) -> SecureSumOutcome:
    """Sum one vector per node of ``groups`` (cohorts) securely. ``base``: the config
    every stage message carries; ``seed``: seeds the cohorts' neighbour rings.
    ``setup_replies``: the nodes already answered the setup stage (their public keys in
    ``stage-out``, e.g. in their train replies), so it is not sent again."""
    sessions: list[ServerSession | None] = []
    where: dict[int, int] = {}
    for i, group in enumerate(groups):
        ring_seed = int(np.random.SeedSequence([*seed, i]).generate_state(1)[0])
        cohort = SecureSumConfig(tuple(group), length, neighbours=neighbours, seed=ring_seed)
        sessions.append(ServerSession(cohort))
        where.update({int(node): i for node in group})
    problems: list[str] = []

    def stage(name: str, inputs: Callable[[ServerSession, int], dict]) -> dict[int, Message]:
        messages = []
        for i, cohort_session in enumerate(sessions):
            if cohort_session is None:
                continue
            config = {
                **base,
                STAGE: name,
                SESSION: f"{session}-{i}",
                SECURE_SUM_CONFIG: cohort_session.config.to_json(),
            }
            for node in _alive(cohort_session, name):
                content = RecordDict(
                    {
                        CONFIG: ConfigRecord(config),
                        STAGE_IN: ConfigRecord({"member": node, **inputs(cohort_session, node)}),
                    }
                )
                messages.append(Message(content, node, MESSAGE_TYPE))
        good: dict[int, Message] = {}
        for reply in send_and_receive(messages):
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                problems.append(f"{name}: node {node}: {reply.error.reason}")
            elif node in where:
                good[node] = reply
        return good

    def guarded(i: int, step: Callable[[], None]) -> None:
        try:
            step()
        except (SecureSumError, KeyError, TypeError, ValueError) as err:
            problems.append(f"cohort {i}: {err}")
            sessions[i] = None

    def parsed(got: dict[int, Message], parse: Callable[[Message], Any]) -> dict[int, Any]:
        """Each node's parsed reply; a node whose reply does not parse is left out."""
        out = {}
        for node, reply in got.items():
            try:
                out[node] = parse(reply)
            except (SecureSumError, KeyError, TypeError, ValueError) as err:
                problems.append(f"node {node}: malformed reply ({err})")
        return out

    def per_cohort(replies: dict[int, Message], parse, receive) -> None:
        for i, cohort_session in enumerate(sessions):
            if cohort_session is not None:
                got = parsed({n: r for n, r in replies.items() if where[n] == i}, parse)
                guarded(
                    i, lambda s=cohort_session, g=got, i=i: problems.extend(receive(i, s, g) or [])
                )

    if setup_replies is None:
        setup_replies = stage("setup", lambda s, n: {})
    per_cohort(
        setup_replies,
        lambda r: {"c": bytes(_out(r)["c"]), "s": bytes(_out(r)["s"])},
        lambda i, s, got: s.receive_setup(got),
    )
    per_cohort(
        stage("share", lambda s, n: _keys_input(s.keys_for(n))),
        lambda r: _pairs(_out(r), "to", "box"),
        lambda i, s, got: s.receive_shares(got),
    )
    per_cohort(
        stage("mask", lambda s, n: _boxes_input(s.shares_for(n))),
        _masked,
        lambda i, s, got: s.receive_masked(got),
    )
    survivors: dict[int, tuple[list[int], list[int]]] = {}
    for i, cohort_session in enumerate(sessions):
        if cohort_session is not None:
            guarded(i, lambda s=cohort_session, i=i: survivors.__setitem__(i, s.survivors()))
    sums: dict[int, np.ndarray] = {}
    per_cohort(
        stage(
            "unmask",
            lambda s, n: {"sent": survivors[where[n]][0], "dropped": survivors[where[n]][1]},
        ),
        lambda r: {"b": _pairs(_out(r), "b-ids", "b"), "s": _pairs(_out(r), "s-ids", "s")},
        lambda i, s, got: sums.__setitem__(i, s.unmask(got)) or [],
    )
    outcome = SecureSumOutcome(None, problems=problems, cohorts=len(groups))
    outcome.cohorts_failed = sum(s is None for s in sessions)
    if sums:
        outcome.total = np.zeros(length, dtype=np.float64)
        for i, part in sorted(sums.items()):
            outcome.total += part
            outcome.summed += survivors[i][0]
            outcome.dropped += survivors[i][1]
    return outcome


def _alive(session: ServerSession, stage: str) -> list[int]:
    """The cohort's nodes that take part in ``stage``."""
    if stage == "setup":
        return list(session.config.clients)
    if stage == "share":
        return sorted(session.public_keys)
    if stage == "mask":
        return sorted(session.ciphertexts)
    return sorted(session.masked)


def _out(reply: Message) -> dict[str, Any]:
    record = reply.content.get(STAGE_OUT)
    if not isinstance(record, ConfigRecord):
        raise SecureSumError(f"node {reply.metadata.src_node_id}: the reply has no '{STAGE_OUT}'")
    return dict(record)


def _pairs(out: dict[str, Any], ids: str, values: str) -> dict[int, bytes]:
    return {int(v): bytes(x) for v, x in zip(out.get(ids, []), out.get(values, []), strict=True)}


def _masked(reply: Message) -> np.ndarray:
    record = reply.content.get(MASKED)
    if not isinstance(record, ArrayRecord) or MASKED not in record:
        raise SecureSumError(f"node {reply.metadata.src_node_id}: the reply has no masked vector")
    return record[MASKED].numpy()


def _keys_input(keys: dict[int, dict[str, bytes]]) -> dict[str, list]:
    return {
        "ids": list(keys),
        "c": [k["c"] for k in keys.values()],
        "s": [k["s"] for k in keys.values()],
    }


def _boxes_input(boxes: dict[int, bytes]) -> dict[str, list]:
    return {"ids": list(boxes), "box": list(boxes.values())}
