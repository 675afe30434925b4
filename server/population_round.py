"""The server's side of the population prior: one release by federated analytics.

Every node contributes its 0/1 vector (:mod:`fedgeo.population`). With
``population-secure-sum`` (the default) the nodes are split into cohorts of
``population-cohort-size`` and each cohort runs the four stages of
:mod:`fedgeo.secure_sum`; all cohorts advance together, one message round trip per
stage. The server learns each cohort's sum, never a node's vector. Without it, nodes
send their vectors in the clear and the server checks each one
(:func:`fedgeo.population.check_contribution`): a malformed vector is rejected, counted
and never summed. With ``population-dp-epsilon`` > 0 Gaussian noise is added to the
sums (by the clients, each its share, under secure summation; by the server otherwise),
calibrated for all the run's releases together.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedgeo.message_keys import (
    CONFIG,
    CONTRIBUTION,
    POPULATION_CONFIG,
    POPULATION_NOISE_STD,
    POPULATION_RELEASE,
    STAGE,
)
from fedgeo.population import (
    CandidateIndex,
    ContributionError,
    PopulationConfig,
    PopulationPrior,
    check_contribution,
)
from fedgeo.secure_sum import cohorts
from server.secure_sum_round import MESSAGE_TYPE, SendAndReceive, run_secure_sum

logger = logging.getLogger("fedgeo.server")


def build_release(
    send_and_receive: SendAndReceive,
    nodes: list[int],
    settings: PopulationConfig,
    index: CandidateIndex,
    instruction: dict[str, Any],
    *,
    release: int,
    releases: int,
    seed: int,
    run_key: str = "run",
) -> tuple[PopulationPrior | None, dict[str, Any]]:
    """One release of the population prior from ``nodes`` (stable ids). Returns the prior
    (None when no sum could be formed) and what happened (counts, seconds, epsilon)."""
    t0 = time.perf_counter()
    sigma = settings.noise_std(releases, index.day_blocks)
    base = {
        **instruction,
        POPULATION_CONFIG: _json(settings),
        POPULATION_RELEASE: int(release),
    }
    info: dict[str, Any] = {
        "round": int(release),
        "nodes": len(nodes),
        "secure_sum": bool(settings.secure_sum),
        "noise_std": sigma,
    }
    if settings.secure_sum:
        total, contributors, counts = _secure(
            send_and_receive, nodes, settings, index, base, sigma, release, seed, run_key
        )
    else:
        total, contributors, counts = _plain(send_and_receive, nodes, index, base)
        if total is not None and sigma > 0:
            rng = np.random.default_rng([seed, release, 0x504F50])
            total = total + rng.normal(0.0, sigma, total.shape)
    info.update(counts)
    info["contributors"] = contributors
    if settings.dp_epsilon > 0:
        info["dp_epsilon"] = settings.dp_epsilon
        info["dp_delta"] = settings.dp_delta
        info["releases_accounted"] = releases
    prior = None
    if total is not None and contributors > 0:
        prior = PopulationPrior.from_sum(total, index, contributors)
        info["transitions"] = int(prior.transitions.nnz)
        info["visited_places"] = int((prior.visitors > 0).sum())
    info["seconds"] = time.perf_counter() - t0
    return prior, info


def _json(settings: PopulationConfig) -> str:
    return json.dumps(settings.to_dict(), sort_keys=True)


def _plain(
    send_and_receive: SendAndReceive,
    nodes: list[int],
    index: CandidateIndex,
    base: dict[str, Any],
) -> tuple[np.ndarray | None, int, dict[str, Any]]:
    messages = [
        Message(RecordDict({CONFIG: ConfigRecord({**base, STAGE: "plain"})}), n, MESSAGE_TYPE)
        for n in nodes
    ]
    replies = send_and_receive(messages)
    total = np.zeros(index.length, dtype=np.float64)
    contributors, failures, rejected = 0, [], []
    for reply in replies:
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            failures.append(f"node {node}: {reply.error.reason}")
            continue
        try:
            record = reply.content.get(CONTRIBUTION)
            if not isinstance(record, ArrayRecord) or CONTRIBUTION not in record:
                raise ContributionError(f"node {node}: the reply has no contribution")
            vector = check_contribution(record[CONTRIBUTION].numpy(), index.length, f"node {node}")
        except ContributionError as err:
            rejected.append(str(err))
            continue
        total += vector
        contributors += 1
    for reason in rejected:
        logger.warning("population: contribution rejected: %s", reason)
    counts = {
        "failures": len(failures),
        "rejected": len(rejected),
        "missing": len(nodes) - len(replies),
        "errors": (failures + rejected)[:5],
    }
    return total, contributors, counts


def _secure(
    send_and_receive: SendAndReceive,
    nodes: list[int],
    settings: PopulationConfig,
    index: CandidateIndex,
    base: dict[str, Any],
    sigma: float,
    release: int,
    seed: int,
    run_key: str,
) -> tuple[np.ndarray | None, int, dict[str, Any]]:
    base = {**base, POPULATION_NOISE_STD: sigma / math.sqrt(len(nodes)) if sigma > 0 else 0.0}
    outcome = run_secure_sum(
        send_and_receive,
        cohorts(nodes, settings.cohort_size),
        index.length,
        neighbours=settings.neighbours,
        base=base,
        session=f"{run_key}-population-{release}",
        seed=[seed, release],
    )
    for problem in outcome.problems:
        logger.warning("population: %s", problem)
    return outcome.total, len(outcome.summed), outcome.counts()
