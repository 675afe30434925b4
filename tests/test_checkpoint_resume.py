"""A run resumed from its checkpoint ends exactly like an uninterrupted one, and a run
that also tests every node each round (``test-every``) like one that does not.

Two starts of the simulation engine: the first runs each strategy 4 rounds straight, 4
rounds with a test curve, and 2 rounds into a third folder, and FedAvg validated every
round, once to the end and once stopping early; the second (fresh Flower node ids, fresh
client processes) resumes the 2-round runs to 4 rounds and the early-stopped run to 6.
The clients keep their state in files (``client-state-dir``), so even SCAFFOLD (control
variates) and the personal user embeddings continue exactly.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from tiny import NODES, TINY_RUN

from experiments.simulate_cli import simulate
from server.app import prepare
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.loop import Federation
from server.run_config import RunConfig

TINY = {
    **TINY_RUN,
    "fraction-train": 0.5,
    "fraction-evaluate": 0.5,
    "eval-every": 2,
    "seed": 3,
}
STRATEGIES = ("fedavg", "fedgeo", "scaffold")


def tiny(out: Path, **overrides) -> dict:
    return {**TINY, "out-dir": str(out), "client-state-dir": str(out / "client-state"), **overrides}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    root = tmp_path_factory.mktemp("resume")
    straight = {
        n: tiny(root / f"{n}-straight", strategy=n, **{"num-rounds": 4}) for n in STRATEGIES
    }
    curves = {
        n: tiny(root / f"{n}-curve", strategy=n, **{"num-rounds": 4, "test-every": 1})
        for n in STRATEGIES
    }
    halves = {n: tiny(root / f"{n}-resumed", strategy=n, **{"num-rounds": 2}) for n in STRATEGIES}
    validated = {"strategy": "fedavg", "num-rounds": 4, "eval-every": 1}
    every = tiny(root / "every-round", **validated, **{"test-every": 1})
    early = tiny(root / "early-stop", **validated, **{"early-stop-patience": 1})
    first = [*straight.values(), *curves.values(), *halves.values(), every, early]
    simulate(first, NODES, 2, progress=False)
    resumed = {n: {**v, "num-rounds": 4, "resume": True} for n, v in halves.items()}
    early_before = _results(early)
    early_resumed = {**early, "num-rounds": 6, "resume": True}
    simulate([*resumed.values(), early_resumed], NODES, 2, progress=False)
    runs = {n: (straight[n], resumed[n], curves[n]) for n in STRATEGIES}
    return {**runs, "early-stop": (every, early, early_before)}


def _results(values: dict) -> dict:
    import json

    return json.loads((Path(values["out-dir"]) / "results.json").read_text())


@pytest.mark.parametrize("name", STRATEGIES)
def test_resumed_run_ends_with_the_same_model(runs, name):
    straight, resumed, _ = runs[name]
    a = load_checkpoint(Path(straight["out-dir"]))
    b = load_checkpoint(Path(resumed["out-dir"]))
    assert a.server_round == b.server_round == 4
    assert set(a.arrays) == set(b.arrays)
    for key in a.arrays:
        np.testing.assert_array_equal(b.arrays[key], a.arrays[key])  # bit for bit


@pytest.mark.parametrize("name", STRATEGIES)
def test_resumed_run_has_the_same_history(runs, name):
    straight, resumed, _ = (_results(v) for v in runs[name])
    assert resumed["resumed_at"] == [3] and straight["resumed_at"] == []
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    for a, b in zip(straight["rounds"], resumed["rounds"], strict=True):
        assert a["participation"]["nodes"] == b["participation"]["nodes"]
        assert a["train"] == pytest.approx(b["train"], abs=1e-6)
    assert [e["round"] for e in resumed["evaluation"]] == [2, 4]
    assert resumed["test"] == pytest.approx(straight["test"], abs=1e-9)


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_test_curve_leaves_the_run_unchanged(runs, name):
    """``test-every = 1``: every node is tested after each round, the last point is the
    final test, and training, validation and the final test are those of a run without."""
    straight, _, curve = runs[name]
    a, b = load_checkpoint(Path(straight["out-dir"])), load_checkpoint(Path(curve["out-dir"]))
    for key in a.arrays:
        np.testing.assert_array_equal(b.arrays[key], a.arrays[key])  # bit for bit
    plain, tested = _results(straight), _results(curve)
    assert "test_curve" not in plain
    assert [p["round"] for p in tested["test_curve"]] == [1, 2, 3, 4]
    assert tested["test_curve"][-1] == {"round": 4, **tested["test"]}
    assert tested["test"] == plain["test"] and tested["evaluation"] == plain["evaluation"]
    samples = {p["samples"] for p in tested["test_curve"]}
    assert samples == {plain["test"]["samples"]}  # every node, every time
    assert len({p["mrr"] for p in tested["test_curve"]}) > 1  # the model changes


def test_checkpoint_is_written_atomically_and_reads_back(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    checkpoint = Checkpoint(3, arrays, b"state", {"rounds": [1, 2, 3]}, {"seed": 1})
    path = save_checkpoint(tmp_path, checkpoint)
    save_checkpoint(tmp_path, checkpoint)  # replacing an existing one
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    back = load_checkpoint(tmp_path)
    assert back.server_round == 3 and back.strategy_state == b"state"
    assert np.array_equal(back.arrays["w"], arrays["w"])
    assert load_checkpoint(tmp_path / "empty") is None
    path.write_bytes(pickle.dumps({"format": 99}))
    with pytest.raises(ValueError, match="not a FedGeo checkpoint"):
        load_checkpoint(tmp_path)


def test_resume_refuses_a_changed_config(tmp_path):
    values = tiny(tmp_path, strategy="fedavg", **{"num-rounds": 2})
    setup = prepare(RunConfig.from_mapping(values))
    save_checkpoint(
        tmp_path,
        Checkpoint(1, setup.arrays, b"", {}, {**setup.config.values, "lr": 0.5}),
    )
    changed = prepare(RunConfig.from_mapping({**values, "resume": True}))
    with pytest.raises(ValueError, match="differs from the checkpoint's in lr"):
        Federation(None, changed).run()
    assert os.path.exists(tmp_path / "checkpoint.pkl")


def test_early_stopping_stops_at_the_first_validation_without_improvement(runs):
    """``early-stop-patience = 1``: training stops at the first validation whose MRR is no
    better than the best so far, and the final test is that of the model of that round;
    resumed with more rounds, the run trains no further."""
    every, early, before = runs["early-stop"]
    full, stopped = _results(every), _results(early)
    mrr = [e["mrr"] for e in full["evaluation"]]
    stop = next(i for i in range(1, len(mrr)) if mrr[i] <= max(mrr[:i])) + 1  # a round
    assert stopped["early_stop"]["stopped_at"] == stop < 4
    assert stopped["early_stop"]["best_round"] == 1 + mrr.index(max(mrr[: stop - 1]))
    assert [r["round"] for r in stopped["rounds"]] == list(range(1, stop + 1))
    assert stopped["evaluation"] == full["evaluation"][:stop]
    point = full["test_curve"][stop - 1]
    assert {"round": stop, **stopped["test"]} == pytest.approx(point, abs=1e-12)
    assert stopped["resumed_at"] == [stop + 1] and before["rounds"] == stopped["rounds"]
    assert "early_stop" not in full
