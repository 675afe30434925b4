"""Federations run round by round on one grid (``simulate(..., interleave=True)``, what
the round-time benchmark uses) end exactly as when they run one after the other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import NODES, TINY_RUN

from experiments.simulate_cli import simulate
from server.checkpoint import load_checkpoint

TINY = {**TINY_RUN, "num-rounds": 3, "fraction-train": 0.5, "fraction-evaluate": 0.5, "seed": 5}
STRATEGIES = ("fedavg", "fedgeo")


def _run(out: Path, strategy: str) -> dict:
    return {**TINY, "strategy": strategy, "out-dir": str(out), "client-state-dir": str(out / "cs")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    root = tmp_path_factory.mktemp("interleave")
    alone = {n: _run(root / f"{n}-alone", n) for n in STRATEGIES}
    together = {n: _run(root / f"{n}-interleaved", n) for n in STRATEGIES}
    simulate(list(alone.values()), NODES, 2, progress=False)
    returned = simulate(list(together.values()), NODES, 2, progress=False, interleave=True)
    assert [r["strategy"] for r in returned] == list(STRATEGIES)
    return {n: (alone[n], together[n]) for n in STRATEGIES}


def _results(values: dict) -> dict:
    return json.loads((Path(values["out-dir"]) / "results.json").read_text())


@pytest.mark.parametrize("name", STRATEGIES)
def test_interleaved_run_ends_with_the_same_model(runs, name):
    a, b = (load_checkpoint(Path(v["out-dir"])) for v in runs[name])
    assert a.server_round == b.server_round == 3
    for key in a.arrays:
        np.testing.assert_array_equal(b.arrays[key], a.arrays[key])  # bit for bit


@pytest.mark.parametrize("name", STRATEGIES)
def test_interleaved_run_has_the_same_history_and_test(runs, name):
    alone, together = (_results(v) for v in runs[name])
    assert len(together["timings_s"]["rounds"]) == 3
    for a, b in zip(alone["rounds"], together["rounds"], strict=True):
        assert a["participation"]["nodes"] == b["participation"]["nodes"]
        assert a["train"] == pytest.approx(b["train"], abs=1e-9)
    assert together["test"] == pytest.approx(alone["test"], abs=1e-12)
