"""The server's round loop: nodes, rounds, federated evaluation, checkpoints, results.

FedGeo drives the strategy's hooks itself instead of ``Strategy.start`` so that it can
checkpoint every round, resume, evaluate every ``eval-every`` rounds, count failures and
time rounds:

1. *Nodes.* Wait for the nodes, send every node a ``query`` and keep those that answer.
   Each gets a **stable id**: ``1 + partition id`` for a simulated node, the lower 63
   bits of its Flower node id on a device. Flower draws fresh random node ids in every
   simulation, so the strategies see the nodes only through :class:`NodeView`, which
   renames them; node sampling then depends only on ``(seed, round, node)`` and a
   resumed run samples the same clients. A simulation with fewer nodes than users
   shares them: each user keeps its stable id, and its messages name it
   (:func:`discover_nodes`). The replies' data profiles go to
   ``strategy.set_profiles`` (FedGeo).
2. *Round r.* ``seed_round(seed, r)``; ``configure_train`` -> ``send_and_receive`` ->
   ``aggregate_train``. Error replies are counted as failures, except those of clients
   with too little data to train (``too_little_data``, see below); with fewer than
   ``min-replies`` good replies, or when aggregation fails, the round keeps the previous
   arrays (logged, never a crash). Every ``eval-every`` rounds and in the last round:
   ``configure_evaluate`` -> ``aggregate_evaluate`` on the validation split, with
   metrics micro-averaged from the clients' sums. Then a checkpoint. With
   ``early-stop-patience`` = N, training stops after N validations in a row without a
   better validation MRR (:func:`early_stop`).
3. *End.* Every node evaluates the final model on its test samples; ``results.json``.
   With ``keep-best-model``, the starting model is validated before round 1 (as round 0),
   every check validates the same clients, and the final model is the global model of
   the best validation MRR, not the last one (:func:`best_model`).

A client whose data is too small to train replies with an error of code
:data:`~fedgeo.data.errors.TOO_LITTLE_DATA_CODE`. It is no failure: such replies are
logged at INFO and counted apart, as ``too_little_data`` of the nodes and of each round
(and left out of ``test_failures``).

With ``dp`` on, the strategy comes in a Flower DP wrapper (:mod:`server.privacy`): the
loop reaches FedGeo's hooks (profiles, participation log) through
:func:`server.privacy.unwrap`, tells the wrapper how many clients a round samples once
the nodes are known, and keeps ``results["privacy"]`` (the privacy spent so far, per
round and on resume).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from fedgeo.data.errors import TOO_LITTLE_DATA_CODE
from fedgeo.message_keys import (
    CLIENT_KEY,
    CONFIG,
    POPULATION_PRIOR,
    PROFILE,
    RETURN_RANKS,
    SERVER_ROUND,
    SPLIT,
    USER_PARTITION,
)
from fedgeo.metrics import BREAKDOWN_PREFIXES, MetricSums
from fedgeo.population import CandidateIndex, PopulationPrior
from server.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    write_results,
)
from server.population_round import build_release
from server.privacy import PrivacyLedger, unwrap
from server.run_config import RunConfig
from server.secure_aggregation import secure_mean, secure_train_messages
from server.strategies import restore_strategy_state, seed_round, strategy_state
from server.strategies.contract import to_arrayrecord, to_numpy
from server.validation import split_valid

logger = logging.getLogger("fedgeo.server")

POPULATION_FILE = "population.npz"
"""The latest population prior, in the run's out-dir (read back on resume)."""
PULL_INTERVAL = 0.05
"""Seconds between two polls for replies."""
SETTLE_S = 3.0


POLL_WINDOW = 256
"""Replies asked for per poll: the oldest pending messages (see ``NodeView``)."""


ProgressHook = Callable[[str, int, int], None]
"""``(label, replies so far, messages)`` for long node-by-node steps (the profile query,
tests of every node, the population prior's stages)."""


class Stopped(RuntimeError):
    """The run was asked to stop (Ctrl-C in ``fedgeo simulate``)."""


class NodeView(Grid):
    """A grid whose nodes carry stable ids (see the module docstring).

    Strategies and the loop address nodes by stable id; messages are renamed on the
    way out (``dst_node_id``) and replies on the way back (``src_node_id``, from the
    message each reply answers). ``send_and_receive`` polls for replies itself so that
    a ``stop`` event or the timeout ends the wait.

    **Shared nodes.** A simulation with fewer SuperNodes than users lets one node serve
    several users: ``users`` maps such a stable id to its user's partition id, which its
    messages carry in their config (``user-partition``). ``send_and_receive`` then keeps
    at most one message in flight per node, so that a node's state (each user's in its
    own record) is never written by two messages at once.
    """

    def __init__(
        self,
        grid: Grid,
        stable_to_real: Mapping[int, int],
        stop: threading.Event | None = None,
        on_progress: ProgressHook | None = None,
        users: Mapping[int, int] | None = None,
    ) -> None:
        self.grid = grid
        self.to_real = dict(stable_to_real)
        self.users = dict(users or {})
        self.stop = stop
        self.on_progress = on_progress
        self._sent: dict[str, int] = {}  # message id -> stable id of its destination

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return sorted(self.to_real)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        outgoing, stables = [], []
        for message in messages:
            stable = int(message.metadata.dst_node_id)
            if stable in self.users:
                message.content = _for_user(message.content, self.users[stable])
            message.metadata.dst_node_id = self.to_real[stable]
            outgoing.append(message)
            stables.append(stable)
        ids = list(self.grid.push_messages(outgoing))
        self._sent.update(zip(ids, stables, strict=True))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            stable = self._sent.pop(reply.metadata.reply_to_message_id, None)
            if stable is None:  # not sent through this view
                stable = int(reply.metadata.src_node_id)
            # Metadata has no setter for the source; Flower itself writes __dict__ here.
            reply.metadata.__dict__["_src_node_id"] = stable
        return replies

    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
        label: str | None = None,
    ) -> list[Message]:
        """Send ``messages`` and wait for their replies (or ``timeout``); with a ``label``
        the view's ``on_progress(label, replies, messages)`` hook hears of every reply.
        A message for a shared node waits until the node answered the one before."""
        batch = list(messages)
        held: dict[int, collections.deque[Message]] = collections.defaultdict(collections.deque)
        busy: set[int] = set()
        first = []
        for message in batch:
            real = self.to_real[int(message.metadata.dst_node_id)]
            if real in busy:
                held[real].append(message)
            else:
                busy.add(real)
                first.append(message)
        order = self.push_messages(first)  # message ids in the order sent
        pending = set(order)
        total = len(batch)
        oldest = 0
        report = self.on_progress if label is not None else None
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        if report is not None:
            report(label, 0, total)
        while pending:
            if self.stop is not None and self.stop.is_set():
                raise Stopped("the run was stopped")
            # A poll costs time per message asked about, and replies come back about
            # in the order sent: ask for the oldest POLL_WINDOW pending ones.
            while order[oldest] not in pending:
                oldest += 1
            window = [i for i in order[oldest : oldest + 4 * POLL_WINDOW] if i in pending]
            got = self.pull_messages(window[:POLL_WINDOW])
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            following = [
                held[real].popleft()
                for real in (self.to_real[int(m.metadata.src_node_id)] for m in got)
                if held.get(real)
            ]
            if following:
                sent = self.push_messages(following)
                order.extend(sent)
                pending.update(sent)
            if report is not None and got:
                report(label, len(replies), total)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(PULL_INTERVAL)
        for message_id in pending:  # unanswered: forget them
            self._sent.pop(message_id, None)
        # Arrival order varies; aggregation sums floats in reply order, so fix it.
        return sorted(replies, key=lambda m: int(m.metadata.src_node_id))


def _for_user(content: RecordDict, partition: int) -> RecordDict:
    """``content`` addressed to the user ``partition`` of a shared simulated node: the
    same records (not copied) with a config that names the user."""
    config = content.get(CONFIG)
    out = RecordDict({k: v for k, v in content.items() if k != CONFIG})
    out[CONFIG] = ConfigRecord({**(config or {}), USER_PARTITION: partition})
    return out


@dataclass
class Setup:
    """What the server prepared before the rounds (see ``server.app.prepare``)."""

    config: RunConfig
    arrays: dict[str, np.ndarray]
    """Initial global shared arrays."""
    instruction: dict[str, Any]
    """Config entries every instruction carries."""
    expected_nodes: int | None = None
    """Simulation: the number of users (one node each); None on a deployment."""
    describe: dict[str, Any] = field(default_factory=dict)
    """Data set and prior facts for results.json."""
    user_ids: list[Any] | None = None
    """Simulation: user id of each partition (for research-mode predictions)."""
    place_ids: np.ndarray | None = None
    """Simulation: original id of each dense place index."""
    population_index: CandidateIndex | None = None
    """The population prior's public index space (when the model uses the prior)."""


def conform(record: ArrayRecord, reference: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``record`` with each array in the shape of the model's array of the same name.

    Some aggregations hand back a scalar parameter as a 1-element vector; that is
    reshaped. Raises ``ValueError`` when names or sizes differ from the model's.
    """
    arrays = to_numpy(record)
    if set(arrays) != set(reference):
        raise ValueError(
            f"aggregated arrays {sorted(arrays)} are not the model's {sorted(reference)}"
        )
    for key, value in arrays.items():
        shape = np.shape(reference[key])
        if value.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"aggregated array '{key}' has shape {value.shape}, model {shape}")
        arrays[key] = value.reshape(shape)
    return to_arrayrecord(arrays)


def micro_average(records: list[RecordDict], weighted_by_key: str = "") -> MetricRecord:
    """Exact micro-averaged ranking metrics from the clients' additive sums (usable as a
    strategy's ``evaluate_metrics_aggr_fn``); float sums use ``math.fsum``, so the
    result does not depend on the order of the replies. The ``return-*`` and ``new-*``
    metrics are added when every reply carries their sums."""
    replies = [dict(next(iter(r.metric_records.values()))) for r in records]
    metrics = MetricSums.total([MetricSums.from_dict(m) for m in replies]).finalize()
    for prefix in BREAKDOWN_PREFIXES:
        if replies and all(prefix + "count" in m for m in replies):
            parts = [MetricSums.from_dict(m, prefix) for m in replies]
            metrics.update(MetricSums.total(parts).finalize(prefix))
    return MetricRecord(metrics)


def _split(replies: list[Message]) -> tuple[list[Message], list[str], list[str]]:
    """The good replies, the errors, and the replies of clients with too little data to
    train (error code ``TOO_LITTLE_DATA_CODE``; not among the errors), as reasons."""
    good = [m for m in replies if not m.has_error()]
    errors, too_small = [], []
    for m in replies:
        if m.has_error():
            reason = f"node {m.metadata.src_node_id}: {m.error.reason}"
            (too_small if m.error.code == TOO_LITTLE_DATA_CODE else errors).append(reason)
    return good, errors, too_small


def wait_for_nodes(
    grid: Grid, wanted: int, minimum: int, wait_s: float, stop: threading.Event | None = None
) -> list[int]:
    """The connected node ids once ``wanted`` nodes are there, or once at least
    ``minimum`` are there and their number has not changed for ``SETTLE_S`` seconds
    (a simulation registers all its nodes at once). Raises RuntimeError when fewer than
    ``minimum`` nodes connect within ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    last_count, last_change = -1, time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        now = time.monotonic()
        if len(nodes) != last_count:
            last_count, last_change = len(nodes), now
        if len(nodes) >= wanted:
            return nodes
        if len(nodes) >= minimum and (now - last_change >= SETTLE_S or now >= deadline):
            logger.info("%d of %d nodes connected; going on with them", len(nodes), wanted)
            return nodes
        if now >= deadline:
            raise RuntimeError(
                f"only {len(nodes)} node(s) connected after {wait_s:g} s, need {minimum} "
                f"(of {wanted} expected; check num-supernodes / the SuperNodes)"
            )
        if stop is not None and stop.is_set():
            raise Stopped("the run was stopped")
        time.sleep(0.1)


def discover_nodes(
    grid: Grid,
    setup: Setup,
    stop: threading.Event | None = None,
    on_progress: ProgressHook | None = None,
) -> tuple[NodeView, dict[int, dict[str, float]], list[str], list[str]]:
    """Wait for the nodes, query their profiles, and name them by stable id.

    Returns the view, the profiles, the query errors and the replies of nodes with too
    little data to train (left out, not errors).

    A simulation with fewer nodes than users (``setup.expected_nodes``) shares them:
    user ``p`` is served by node ``p mod nodes``, and its messages name it (see
    :class:`NodeView`). Results are those of one node per user; only fewer clients run
    at once."""
    cfg = setup.config
    minimum = cfg.min_nodes
    wanted = setup.expected_nodes or minimum
    nodes = wait_for_nodes(grid, wanted, minimum, cfg.node_wait, stop)
    partitions: dict[int, int] = {}
    if setup.expected_nodes is not None and len(nodes) < setup.expected_nodes:
        logger.warning(
            "%d users share %d simulated nodes (for one node per user with flwr run, pass "
            '--federation-config "num-supernodes=%d")',
            setup.expected_nodes,
            len(nodes),
            setup.expected_nodes,
        )
        partitions = {p + 1: p for p in range(setup.expected_nodes)}
        targets = {p + 1: nodes[p % len(nodes)] for p in range(setup.expected_nodes)}
    else:
        targets = {n: n for n in nodes}
    messages = [
        Message(RecordDict({"config": ConfigRecord(setup.instruction)}), target, "query")
        for target in targets
    ]
    probe = NodeView(grid, targets, stop, on_progress, partitions)
    replies = probe.send_and_receive(messages, timeout=cfg.round_timeout, label="profile query")
    good, errors, too_small = _split(replies)
    mapping: dict[int, int] = {}  # stable id -> Flower node id
    users: dict[int, int] = {}  # stable id -> partition id, on shared nodes
    profiles: dict[int, dict[str, float]] = {}
    for reply in good:
        profile = dict(reply.content[PROFILE])
        key = int(profile.pop(CLIENT_KEY, -1))
        target = int(reply.metadata.src_node_id)
        real = targets[target]
        # Flower node ids are unsigned 64-bit; strategies hold node ids as int64.
        stable = key + 1 if key >= 0 else real & 0x7FFF_FFFF_FFFF_FFFF
        if stable in profiles:
            errors.append(f"node {real}: client key {key} already taken; node left out")
            continue
        mapping[stable] = real
        if target in partitions:
            users[stable] = partitions[target]
        profiles[stable] = {k: float(v) for k, v in profile.items()}
    for error in errors:
        logger.warning("query failed: %s", error)
    for reason in too_small:
        logger.info("node left out: %s", reason)
    if len(mapping) < minimum:
        raise RuntimeError(
            f"only {len(mapping)} node(s) answered the profile query, need {minimum}"
            + (f"; {len(too_small)} with too little data to train" if too_small else "")
            + (f"; first error: {errors[0]}" if errors else "")
        )
    return NodeView(grid, mapping, stop, on_progress, users), profiles, errors, too_small


def _participation(strategy: Strategy, server_round: int, sampled: list[int]) -> dict[str, Any]:
    info: dict[str, Any] = {"sampled": len(sampled), "nodes": sampled}
    log = getattr(strategy, "participation", None)
    if isinstance(log, dict) and server_round in log:
        probs = np.asarray(log[server_round].get("probabilities", []), dtype=np.float64)
        if len(probs):
            info["probability_mean"] = float(probs.mean())
            info["probability_min"] = float(probs.min())
        info["sampling"] = log[server_round].get("sampling")
    return info


def _probabilities(strategy: Strategy) -> dict[str, Any] | None:
    probs = getattr(strategy, "probabilities", None)
    if not probs:
        return None
    values = np.asarray(list(probs.values()), dtype=np.float64)
    return {
        "nodes": len(values),
        "min": float(values.min()),
        "mean": float(values.mean()),
        "max": float(values.max()),
        "below_half": int((values < 0.5).sum()),
        "by_node": {str(k): float(v) for k, v in sorted(probs.items())},
    }


def early_stop(
    state: Mapping[str, Any] | None,
    server_round: int,
    validation: Mapping[str, Any],
    patience: int,
) -> dict[str, Any]:
    """The early-stopping record after a validation in ``server_round``.

    A validation MRR above the best so far makes this round the best and resets the count
    of validations without improvement (``stale``); ``stopped_at`` is set to the round in
    which that count reaches ``patience``. The record lives in the results, so a resumed
    run continues the count (and does not train past a stop)."""
    empty = {"metric": "mrr", "best": None, "best_round": None, "stale": 0, "stopped_at": None}
    state = dict(state or empty)
    state["patience"] = patience
    value = float(validation["mrr"])
    if state["best"] is None or value > state["best"]:
        state.update(best=value, best_round=server_round, stale=0)
    else:
        state["stale"] += 1
        if state["stale"] >= patience and state["stopped_at"] is None:
            state["stopped_at"] = server_round
    return state


def best_model(
    state: Mapping[str, Any] | None, server_round: int, validation: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The model-selection record after a validation in ``server_round``, and whether
    this round's model is the new best (a validation MRR above every earlier one; the
    earlier round wins a tie)."""
    state = dict(state or {"metric": "mrr", "best": None, "round": None})
    value = float(validation["mrr"])
    improved = state["best"] is None or value > state["best"]
    if improved:
        state.update(best=value, round=server_round)
    return state, improved


def _pause(results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield ``results`` once; return the seconds spent suspended."""
    t0 = time.perf_counter()
    yield results
    return time.perf_counter() - t0


def run_interleaved(federations: Sequence[Federation]) -> list[dict[str, Any]]:
    """Run several federations on one grid round by round, so that they meet the same
    machine conditions: all discover their nodes, then all run round 1, then round 2, ...
    The order alternates every round (A B, B A, A B, ...), so neither always goes first.

    Each federation's results are those it would reach alone: every round starts from
    ``seed_round(seed, round)``, and clients keep their state apart per run
    (``client-state-dir``). Used by ``benchmarks/round_speed.py`` to compare round times.
    Returns the results in the order given."""
    steps = [federation.steps() for federation in federations]
    results: list[dict[str, Any]] = [{} for _ in federations]
    active = list(range(len(federations)))
    turn = 0
    while active:
        order = active if turn % 2 == 0 else active[::-1]
        for i in order:
            try:
                results[i] = next(steps[i])
            except StopIteration:
                active.remove(i)
        turn += 1
    return results


class Federation:
    """One federated run on a grid (see the module docstring)."""

    def __init__(
        self,
        grid: Grid,
        setup: Setup,
        *,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        stop: threading.Event | None = None,
        on_progress: ProgressHook | None = None,
    ) -> None:
        self.grid = grid
        self.setup = setup
        self.cfg = setup.config
        self.on_round = on_round
        self.on_progress = on_progress
        self.stop = stop
        self.strategy = self.cfg.build_strategy()
        self.privacy = PrivacyLedger.from_values(self.cfg.values)
        self.population: ArrayRecord | None = None
        """The population prior sent with every train and evaluate instruction."""
        self.final_arrays: dict[str, np.ndarray] | None = None
        """The global arrays at the end of :meth:`run` (the tested ones)."""
        self.best_arrays: dict[str, np.ndarray] | None = None
        """With ``keep-best-model``: the global arrays of the best validation so far."""
        self.test_failures = 0
        if hasattr(self.base, "evaluate_metrics_aggr_fn"):
            self.base.evaluate_metrics_aggr_fn = micro_average

    @property
    def base(self) -> Strategy:
        """The strategy itself, inside its DP wrapper if any."""
        return unwrap(self.strategy)

    def instruction(self, server_round: int, **extra: Any) -> ConfigRecord:
        return ConfigRecord({**self.setup.instruction, SERVER_ROUND: server_round, **extra})

    def run(self) -> dict[str, Any]:
        """Run (or resume) the rounds, the final test and write the results."""
        results: dict[str, Any] = {}
        for step in self.steps():
            results = step
        return results

    def steps(self) -> Iterator[dict[str, Any]]:
        """:meth:`run` one step at a time: yields the results so far after node discovery
        and after each round, and the final results last (after the final test).

        :func:`run_interleaved` drives several federations on one grid with it. Time spent
        suspended between steps is left out of ``timings_s.total``."""
        cfg, out_dir = self.cfg, self.cfg.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        arrays, results, start = self._start()
        view, profiles, query_errors, too_small = discover_nodes(
            self.grid, self.setup, self.stop, self.on_progress
        )
        if hasattr(self.base, "set_profiles"):
            self.base.set_profiles(profiles)
        results["nodes"] = {
            "federated": len(view.get_node_ids()),
            "query_failures": len(query_errors),
            "too_little_data": len(too_small),
        }
        self.privacy.start(
            self.strategy,
            len(view.get_node_ids()),
            seed=cfg.seed,
            simulated=self.setup.expected_nodes is not None,
            previous=results.get("privacy"),
        )
        results["privacy"] = self.privacy.summary()
        if self.setup.population_index is not None and start > 1:
            self._load_population(view, start, results)
        paused = yield from _pause(results)
        last_round = start - 1
        stopped = bool(results.get("early_stop", {}).get("stopped_at"))
        for server_round in range(start, cfg.num_rounds + 1):
            if stopped:  # a resumed run that had stopped early trains no further
                break
            if self.setup.population_index is not None:
                self._refresh_population(view, server_round, results)
            if cfg.keep_best_model and server_round == 1:  # with the first population prior
                self._validate_start(view, arrays, results)
            record, arrays = self._round(view, server_round, arrays)
            current = to_numpy(arrays)  # one copy a round, for the selection and checkpoint
            results["rounds"].append(record)
            if record.get("evaluate"):
                results["evaluation"].append({"round": server_round, **record["evaluate"]})
                results["validation"] = record["evaluate"]
                if cfg.keep_best_model:
                    self._select(server_round, record["evaluate"], current, results)
                if cfg.early_stop_patience:
                    results["early_stop"] = early_stop(
                        results.get("early_stop"),
                        server_round,
                        record["evaluate"],
                        cfg.early_stop_patience,
                    )
                    stopped = results["early_stop"]["stopped_at"] is not None
            last_round = server_round
            if record.get("test"):
                point = {"round": server_round, **record["test"]}
                results.setdefault("test_curve", []).append(point)
            results["participation"]["per_round"].append(record["participation"]["sampled"])
            results["participation"]["probabilities"] = _probabilities(self.base)
            results["privacy"] = self.privacy.summary()
            results["timings_s"]["rounds"].append(record["seconds"])
            save_checkpoint(
                out_dir,
                Checkpoint(
                    server_round=server_round,
                    arrays=current,
                    strategy_state=strategy_state(self.strategy),
                    results=results,
                    config=dict(cfg.values),
                    rng=rng_states(),
                    best_arrays=self.best_arrays,
                ),
            )
            write_results(out_dir, results)
            if self.on_round is not None:
                self.on_round(record)
            paused += yield from _pause(results)
        if stopped:  # last_round is the round of the stop (a resumed run: its checkpoint's)
            logger.info(
                "%s: stopped early after round %d (best validation MRR in round %d)",
                out_dir,
                last_round,
                results["early_stop"]["best_round"],
            )
        t0 = time.perf_counter()
        tested_round, last_arrays = last_round, arrays
        selected = cfg.keep_best_model and self.best_arrays is not None
        if selected:
            arrays = to_arrayrecord(self.best_arrays)
            tested_round = int(results["best_model"]["round"])
            logger.info("%s: testing the model of round %d", out_dir, tested_round)
        last = None  # the curve's last point is the last model's
        if cfg.test_every and tested_round != last_round:
            last = self._test_every_node(view, last_round, last_arrays)
        results["tested_round"] = tested_round
        results["test"] = self._final_test(view, arrays, tested_round)
        if cfg.test_every:
            point = {"round": last_round, **(last or results["test"])}
            results.setdefault("test_curve", []).append(point)
        results["test_failures"] = self.test_failures
        results["timings_s"]["final_test"] = time.perf_counter() - t0
        results["timings_s"]["total"] = results["timings_s"].get("total", 0.0) + (
            time.perf_counter() - started - paused
        )
        write_results(out_dir, results)
        self.final_arrays = self.best_arrays if selected else to_numpy(arrays)
        yield results

    def _validate_start(self, view: NodeView, arrays: ArrayRecord, results: dict[str, Any]) -> None:
        """Validate the starting model (round 0), the first candidate of the selection."""
        metrics = self._evaluate(view, 0, arrays)
        if metrics:
            results["evaluation"].append({"round": 0, **metrics})
            self._select(0, metrics, to_numpy(arrays), results)

    def _select(
        self,
        server_round: int,
        validation: Mapping[str, Any],
        arrays: dict[str, np.ndarray],
        results: dict[str, Any],
    ) -> None:
        """Keep ``arrays`` (the round's own copy) when their validation is the best so far."""
        results["best_model"], improved = best_model(
            results.get("best_model"), server_round, validation
        )
        if improved:
            self.best_arrays = arrays

    def _start(self) -> tuple[ArrayRecord, dict[str, Any], int]:
        """Fresh arrays and results, or those of the checkpoint when resuming."""
        cfg = self.cfg
        checkpoint = load_checkpoint(cfg.out_dir) if cfg.resume else None
        if checkpoint is None:
            if cfg.resume:
                logger.warning("resume: no checkpoint in %s; starting from round 1", cfg.out_dir)
            results: dict[str, Any] = {
                "method": "federated",
                "strategy": cfg.strategy,
                "config": dict(cfg.values),
                **self.setup.describe,
                "rounds": [],
                "evaluation": [],
                "validation": None,
                "participation": {"per_round": [], "probabilities": None},
                "timings_s": {"rounds": []},
                "resumed_at": [],
            }
            return to_arrayrecord(self.setup.arrays), results, 1
        differences = cfg.differences(checkpoint.config)
        if differences:
            raise ValueError(
                f"cannot resume {cfg.out_dir}: the run config differs from the checkpoint's "
                f"in {', '.join(differences)}"
            )
        restore_strategy_state(self.strategy, checkpoint.strategy_state)
        restore_rng_states(checkpoint.rng)
        self.best_arrays = checkpoint.best_arrays
        results = checkpoint.results
        results["config"] = dict(cfg.values)
        results["resumed_at"].append(checkpoint.server_round + 1)
        results["timings_s"]["total"] = sum(results["timings_s"]["rounds"])
        logger.info("resuming %s after round %d", cfg.out_dir, checkpoint.server_round)
        return to_arrayrecord(checkpoint.arrays), results, checkpoint.server_round + 1

    def _round(
        self, view: NodeView, server_round: int, arrays: ArrayRecord
    ) -> tuple[dict[str, Any], ArrayRecord]:
        """Train (and maybe validate) one round; returns its record and the new arrays."""
        t0 = time.perf_counter()
        record, arrays = self._train(view, server_round, arrays)
        record["evaluate"] = None
        if server_round % self.cfg.eval_every == 0 or server_round == self.cfg.num_rounds:
            record["evaluate"] = self._evaluate(view, server_round, arrays)
        every = self.cfg.test_every
        if every and server_round % every == 0 and server_round < self.cfg.num_rounds:
            record["test"] = self._test_every_node(view, server_round, arrays)  # a curve point
            record["test_failures"] = self.test_failures
        record["seconds"] = time.perf_counter() - t0
        return record, arrays

    def _train(
        self, view: NodeView, server_round: int, arrays: ArrayRecord
    ) -> tuple[dict[str, Any], ArrayRecord]:
        cfg, strategy = self.cfg, self.strategy
        seed_round(cfg.seed, server_round)
        config = self.instruction(server_round)
        messages = self._attach(strategy.configure_train(server_round, arrays, config, view))
        sampled = sorted(int(m.metadata.dst_node_id) for m in messages)
        session = f"{cfg.run_key()}-train-{server_round}"
        if cfg.secure_aggregation:
            secure_train_messages(messages, sampled, session)
        replies = view.send_and_receive(messages, timeout=cfg.round_timeout) if messages else []
        good, errors, too_small = _split(replies)
        for reason in too_small:
            logger.info("round %d: client skipped: %s", server_round, reason)
        if cfg.secure_aggregation:
            good, rejected = good, []
        else:
            good, rejected = split_valid(good, to_numpy(arrays), cfg.max_update_norm)
        record: dict[str, Any] = {
            "round": server_round,
            "replies": len(good),
            "failures": len(errors),
            "too_little_data": len(too_small),
            "rejected": len(rejected),
            "missing": len(messages) - len(replies),
            "errors": errors[:5],
            "rejections": rejected[:5],
            "skipped": None,
            "train": None,
            "privacy": None,
        }
        if len(good) < cfg.min_replies:
            record["skipped"] = f"{len(good)} good replies, need {cfg['min-replies']}"
        elif cfg.secure_aggregation:
            new_arrays, record["train"], record["secure_sum"] = secure_mean(
                lambda ms: view.send_and_receive(ms, timeout=cfg.round_timeout),
                good,
                self.setup.arrays,
                session,
                self.instruction(server_round),
                seed=[cfg.seed, server_round],
            )
            if new_arrays is None:
                record["skipped"] = f"secure aggregation failed: {record['secure_sum']['errors']}"
            else:
                arrays = to_arrayrecord(new_arrays)
        else:
            try:
                new_arrays, metrics = strategy.aggregate_train(server_round, good)
                if new_arrays is not None:
                    arrays = conform(new_arrays, self.setup.arrays)
                else:
                    record["skipped"] = "the strategy returned no arrays"
                record["train"] = dict(metrics) if metrics is not None else None
            except (AggregationError, InconsistentMessageReplies, ValueError) as err:
                record["skipped"] = f"aggregation failed: {err}"
        if record["skipped"]:
            logger.warning("round %d keeps the previous model: %s", server_round, record["skipped"])
        else:
            record["privacy"] = self.privacy.record_round(strategy)
        record["participation"] = _participation(self.base, server_round, sampled)
        return record, arrays

    def _evaluate(self, view: NodeView, server_round: int, arrays: ArrayRecord) -> dict | None:
        # With model selection every check draws the same clients: checks compare models.
        seed_round(self.cfg.seed, 0 if self.cfg.keep_best_model else server_round)
        config = self.instruction(server_round, **{SPLIT: "validation"})
        messages = self._attach(
            self.strategy.configure_evaluate(server_round, arrays, config, view)
        )
        if not messages:
            return None
        replies = view.send_and_receive(messages, timeout=self.cfg.round_timeout)
        try:
            metrics = self.strategy.aggregate_evaluate(server_round, replies)
        except (AggregationError, InconsistentMessageReplies, ValueError) as err:
            logger.warning("round %d: evaluation not aggregated: %s", server_round, err)
            return None
        return dict(metrics) if metrics is not None else None

    def _final_test(self, view: NodeView, arrays: ArrayRecord, last_round: int) -> dict[str, Any]:
        """Every node evaluates the final model (that of ``last_round``) on its test
        samples (with per-sample ranks in research mode); writes predictions.csv in
        research mode."""
        research = self.cfg.research_mode and self.setup.user_ids is not None
        return self._test_every_node(view, last_round, arrays, predictions=research, final=True)

    def _test_every_node(
        self,
        view: NodeView,
        server_round: int,
        arrays: ArrayRecord,
        predictions: bool = False,
        final: bool = False,
    ) -> dict[str, Any]:
        """Every node evaluates ``arrays`` on its test samples; with ``predictions`` the
        per-sample ranks are written to predictions.csv. Training never depends on it:
        each round reseeds the random generators first (``seed_round``)."""
        cfg = self.cfg
        config = self.instruction(server_round, **{SPLIT: "test", RETURN_RANKS: int(predictions)})
        seed_round(cfg.seed, server_round)
        template = list(self.strategy.configure_evaluate(server_round, arrays, config, view))
        content = (
            template[0].content if template else RecordDict({"arrays": arrays, "config": config})
        )
        messages = self._attach(Message(content, node, "evaluate") for node in view.get_node_ids())
        label = "final test" if final else f"test, round {server_round}"
        replies = view.send_and_receive(messages, timeout=cfg.round_timeout, label=label)
        good, errors, too_small = _split(replies)
        for error in errors:
            logger.warning("round %d: test failed: %s", server_round, error)
        for reason in too_small:
            logger.info("round %d: test: client skipped: %s", server_round, reason)
        self.test_failures = len(errors)
        if predictions and good:
            self._write_predictions(good)
        return dict(micro_average([m.content for m in good]))

    def _attach(self, messages: Iterable[Message]) -> list[Message]:
        """The messages, each carrying the population prior when there is one."""
        messages = list(messages)
        if self.population is not None:
            for message in messages:
                message.content[POPULATION_PRIOR] = self.population
        return messages

    def _refresh_population(
        self, view: NodeView, server_round: int, results: dict[str, Any]
    ) -> None:
        """Build the population prior before the rounds that call for it."""
        if server_round in self.cfg.population.release_rounds(self.cfg.num_rounds):
            self._build_population(view, server_round, results)

    def _build_population(self, view: NodeView, server_round: int, results: dict[str, Any]):
        """One release of the population prior (server.population_round)."""
        settings = self.cfg.population
        prior, info = build_release(
            lambda messages: view.send_and_receive(
                messages, timeout=self.cfg.round_timeout, label="population prior"
            ),
            view.get_node_ids(),
            settings,
            self.setup.population_index,
            self.instruction(server_round),
            release=server_round,
            releases=settings.releases(self.cfg.num_rounds),
            seed=self.cfg.seed,
            run_key=self.cfg.run_key(),
        )
        results.setdefault("population", {}).setdefault("releases", []).append(info)
        logger.info(
            "population prior (round %d): %d contributors, %s transitions, %.1f s",
            server_round,
            info["contributors"],
            info.get("transitions", 0),
            info["seconds"],
        )
        if prior is None:
            logger.warning("population prior not built: %s", info.get("errors"))
            return
        arrays = prior.to_arrays()
        np.savez(self.cfg.out_dir / POPULATION_FILE, **arrays)
        self.population = to_arrayrecord(arrays)

    def _load_population(self, view: NodeView, start: int, results: dict[str, Any]) -> None:
        """On resume: the prior the run had built (or a new one when it is missing)."""
        path = self.cfg.out_dir / POPULATION_FILE
        if path.exists():
            with np.load(path) as saved:
                arrays = {k: saved[k] for k in saved.files}
            PopulationPrior.from_arrays(arrays)  # checks it
            self.population = to_arrayrecord(arrays)
            return
        logger.warning("resume: no %s; building the population prior again", path)
        rounds = self.cfg.population.release_rounds(self.cfg.num_rounds)
        self._build_population(view, max(r for r in rounds if r < start), results)

    def _write_predictions(self, replies: list[Message]) -> None:
        from fedgeo.results import write_predictions_csv

        users, targets, ranks = [], [], []
        for reply in replies:
            metrics = next(iter(reply.content.metric_records.values()))
            user = self.setup.user_ids[int(reply.metadata.src_node_id) - 1]
            for target, rank in zip(metrics["targets"], metrics["ranks"], strict=True):
                users.append(user)
                targets.append(self.setup.place_ids[int(target)])
                ranks.append(int(rank))
        write_predictions_csv(self.cfg.out_dir, users, targets, ranks)
