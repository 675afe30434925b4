"""Secure aggregation of model updates (run-config ``secure-aggregation``).

The round's train instructions carry the cohort of the sampled nodes (``secure-sum-config``,
``session``) and each node's id in it (``stage-in``). A client trains as usual but keeps
``[n, n * arrays]`` (``n``: its training examples) on the device and replies with its
public keys instead of its arrays; the server then runs the remaining secure-sum stages
(:mod:`server.secure_sum_round`) and learns only the sum, from which it takes the
example-weighted mean of the updates: FedAvg's (and FedProx's) aggregate, without seeing
any client's update. Fixed point at 2^-16 per ``n * w`` changes the mean by at most
``2^-17`` per parameter and client (``tests/test_secure_aggregation.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message

from fedgeo.message_keys import CONFIG, METRICS, SECURE_SUM_CONFIG, SESSION, STAGE_IN
from fedgeo.secure_sum import DEFAULT_NEIGHBOURS, SecureSumConfig
from server.secure_sum_round import SendAndReceive, run_secure_sum


def secure_train_messages(messages: list[Message], sampled: list[int], session: str) -> None:
    """Turn the round's train instructions into the setup stage of a secure sum. The
    cohort only names the sampled nodes: every later stage carries the cohort of the nodes
    that replied, with the vector length and neighbour ring (:func:`secure_mean`)."""
    if len(sampled) < 2:
        return
    cohort = SecureSumConfig(tuple(sampled), 1).to_json()
    for message in messages:
        config = message.content[CONFIG]
        config[SECURE_SUM_CONFIG] = cohort
        config[SESSION] = f"{session}-0"
        message.content[STAGE_IN] = ConfigRecord({"member": int(message.metadata.dst_node_id)})


def secure_mean(
    send_and_receive: SendAndReceive,
    replies: list[Message],
    reference: Mapping[str, np.ndarray],
    session: str,
    instruction: ConfigRecord,
    *,
    seed: Sequence[int],
) -> tuple[dict[str, np.ndarray] | None, dict[str, float] | None, dict[str, Any]]:
    """The example-weighted mean of the replying clients' arrays, by secure summation.
    Returns the arrays (None when the sum failed), the train metrics and what happened."""
    length = 1 + sum(int(np.prod(np.shape(v), dtype=np.int64)) for v in reference.values())
    nodes = sorted(int(r.metadata.src_node_id) for r in replies)
    info: dict[str, Any] = {"clients": len(nodes)}
    if len(nodes) < 2:
        info["errors"] = [f"{len(nodes)} client(s) replied; a secure sum needs 2"]
        return None, None, info
    # The sum runs over the nodes that replied; every later stage carries this cohort,
    # so the clients' neighbour rings agree with the server's.
    outcome = run_secure_sum(
        send_and_receive,
        [tuple(nodes)],
        length,
        neighbours=DEFAULT_NEIGHBOURS,
        base=dict(instruction),
        session=session,
        seed=seed,
        setup_replies={int(r.metadata.src_node_id): r for r in replies},
    )
    info.update(outcome.counts())
    info["summed"] = len(outcome.summed)
    if outcome.total is None or outcome.total[0] <= 0:
        return None, None, info
    total = outcome.total
    mean = total[1:] / total[0]
    arrays, offset = {}, 0
    for key, value in reference.items():
        size = int(np.prod(np.shape(value), dtype=np.int64))
        arrays[key] = mean[offset : offset + size].reshape(np.shape(value)).astype(value.dtype)
        offset += size
    summed = set(outcome.summed)
    weights, losses = [], []
    for reply in replies:
        if int(reply.metadata.src_node_id) in summed:
            metrics = reply.content[METRICS]
            weights.append(float(metrics["num-examples"]))
            losses.append(float(metrics["train-loss"]))
    loss = math.fsum(w * x for w, x in zip(weights, losses, strict=True)) / math.fsum(weights)
    return arrays, {"train-loss": loss}, info
