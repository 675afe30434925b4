"""No reply of a federation carries raw check-ins or personal parameters.

A small run of every strategy family whose clients send something special (FedGeo:
profiles and proximal training; SCAFFOLD: control deltas; FedDyn: client state;
local-only: nothing but metrics) goes through Flower's simulation engine while a grid
wrapper records EVERY reply (query, train, evaluate). Each reply may only hold arrays
named like shared model parameters and flat records of scalars, and no value may equal
(or contain) any user's place or time sequence.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from tiny import NODES, TINY_RUN

from experiments.simulate_cli import simulate
from fedgeo.models import NextLocationModel
from server.app import prepare, simulation_dataset
from server.run_config import RunConfig

TINY = {**TINY_RUN, "num-rounds": 2, "profile-ldp-epsilon": 1.0}
STRATEGIES = ("fedgeo", "scaffold", "feddyn", "local")
ALLOWED_RECORDS = {"arrays", "metrics", "control-delta", "profile"}
MIN_SEQUENCE = 4
"""Sequences this long or longer must not appear inside any reply value."""


class RecordingGrid:
    """Delegates to a grid and keeps every reply it pulls."""

    def __init__(self, grid) -> None:
        self.grid = grid
        self.replies: list = []

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        replies = list(self.grid.pull_messages(message_ids))
        self.replies.extend(replies)
        return replies


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-raw-data")
    plan = [{**TINY, "strategy": n, "out-dir": str(root / n)} for n in STRATEGIES]
    grids: list[RecordingGrid] = []

    def wrap(grid):
        grids.append(RecordingGrid(grid))
        return grids[-1]

    results = simulate(plan, NODES, 2, progress=False, grid_wrapper=wrap)
    config = RunConfig.from_mapping(plan[0])
    expected = 0  # per run: queries, train and evaluate instructions, final tests
    for r in results:
        expected += 2 * r["nodes"]["federated"]
        expected += sum(x["participation"]["sampled"] for x in r["rounds"])
        expected += len(r["evaluation"]) * NODES
    replies = [reply for grid in grids for reply in grid.replies]  # one grid per run
    return replies, simulation_dataset(config), prepare(config).arrays, expected


def _contains(values: np.ndarray, sequence: np.ndarray) -> bool:
    """Whether ``sequence`` appears contiguously in the flat ``values``."""
    n = len(sequence)
    if n < MIN_SEQUENCE or values.size < n:
        return False
    windows = np.lib.stride_tricks.sliding_window_view(values, n)
    return bool(np.any(np.all(windows == sequence.astype(values.dtype), axis=1)))


def _sequences(dataset, targets: bool) -> list[np.ndarray]:
    """Each user's place and time sequences (and, with ``targets``, the places of their
    test samples: what research-mode ranks would reveal)."""
    out = []
    for user in dataset.users:
        out += [user.places.astype(np.float64), user.times.astype(np.float64)]
        if targets:
            out.append(user.places[user.test].astype(np.float64))
    return [s for s in out if len(s) >= MIN_SEQUENCE]


def test_every_message_type_was_recorded(recorded):
    replies, _, _, expected = recorded
    kinds = {r.metadata.message_type for r in replies}
    assert kinds == {"query", "train", "evaluate"}
    assert not any(r.has_error() for r in replies)
    assert len(replies) == expected


def test_replies_hold_only_shared_arrays_and_scalars(recorded):
    replies, _, shared, _ = recorded
    shared_keys = set(shared)
    assert not any(NextLocationModel.is_personal(k) for k in shared_keys)
    for reply in replies:
        assert set(reply.content.keys()) <= ALLOWED_RECORDS
        for name, record in reply.content.items():
            if isinstance(record, ArrayRecord):
                assert name in ("arrays", "control-delta")
                assert set(record.keys()) <= shared_keys
            else:
                assert isinstance(record, MetricRecord | ConfigRecord)
                for key, value in record.items():
                    assert isinstance(value, int | float), (key, value)


def test_no_reply_value_is_a_users_sequence(recorded):
    replies, dataset, _, _ = recorded
    full, with_targets = _sequences(dataset, False), _sequences(dataset, True)
    assert full
    for reply in replies:
        for record in reply.content.values():
            if isinstance(record, ArrayRecord):
                flats = [a.numpy().astype(np.float64).ravel() for a in record.values()]
                sequences = with_targets
            else:  # a handful of scalars: compare with whole sequences only
                flats = [np.asarray([float(v) for v in record.values()])]
                sequences = full
            for flat in flats:
                for sequence in sequences:
                    assert not _contains(flat, sequence)


def test_query_replies_are_privatized_profiles(recorded):
    replies, dataset, _, _ = recorded
    exact = {}
    from fedgeo.data.partition import client_profile

    for i, user in enumerate(dataset.users):
        exact[i] = client_profile(user, dataset.places)
    queries = [r for r in replies if r.metadata.message_type == "query"][:NODES]
    noisy = 0
    for reply in queries:
        profile = dict(reply.content["profile"])
        key = int(profile.pop("client-key"))
        assert set(profile) == {"checkins", "distinct_places", "entropy", "radius_of_gyration_km"}
        noisy += profile["checkins"] != exact[key]["checkins"]
    assert noisy == NODES  # epsilon = 1: every profile is noised


def test_local_only_clients_send_no_arrays(recorded):
    replies, _, _, _ = recorded
    local_train = [r for r in replies if r.metadata.message_type == "train"][-2 * NODES :]
    assert all(set(r.content.keys()) == {"metrics"} for r in local_train)


def test_research_mode_is_off_by_default():
    assert RunConfig.from_mapping({}).values["research-mode"] is False
