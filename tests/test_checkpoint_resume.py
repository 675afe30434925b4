"""A run resumed from its checkpoint ends exactly like an uninterrupted one, and a run
that also tests every node each round (``test-every``) like one that does not.

Two starts of the simulation engine: the first runs each strategy 4 rounds straight, 4
rounds with a test curve, and 2 rounds into a third folder, and FedAvg validated every
round, once to the end and once stopping early; the second (fresh Flower node ids, fresh
client processes) resumes the 2-round runs to 4 rounds and the early-stopped run to 6.
The clients keep their state in files (``client-state-dir``), so even the control variates
(SCAFFOLD; FedGeo with ``fedgeo-control-variates``) and the personal user embeddings
continue exactly.
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
STRATEGIES = {
    "fedavg": {"strategy": "fedavg"},
    "fedgeo": {"strategy": "fedgeo"},
    "scaffold": {"strategy": "scaffold"},
    "fedgeo-control-variates": {"strategy": "fedgeo", "fedgeo-control-variates": True},
}
"""Each run's name and its strategy settings."""


def tiny(out: Path, **overrides) -> dict:
    return {**TINY, "out-dir": str(out), "client-state-dir": str(out / "client-state"), **overrides}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    root = tmp_path_factory.mktemp("resume")
    straight = {
        n: tiny(root / f"{n}-straight", **v, **{"num-rounds": 4}) for n, v in STRATEGIES.items()
    }
    curves = {
        n: tiny(root / f"{n}-curve", **v, **{"num-rounds": 4, "test-every": 1})
        for n, v in STRATEGIES.items()
    }
    halves = {
        n: tiny(root / f"{n}-resumed", **v, **{"num-rounds": 2}) for n, v in STRATEGIES.items()
    }
    validated = {"strategy": "fedavg", "num-rounds": 4, "eval-every": 1}
    every = tiny(root / "every-round", **validated, **{"test-every": 1})
    early = tiny(root / "early-stop", **validated, **{"early-stop-patience": 1})
    selecting = {  # every client validates, on 60 days of check-ins each
        **validated,
        "keep-best-model": True,
        "test-every": 1,
        "fraction-evaluate": 1.0,
        "synthetic-days": 60,
    }
    best = tiny(root / "keep-best", **selecting)
    best_half = tiny(root / "keep-best-resumed", **{**selecting, "num-rounds": 2})
    noise = {"inject-attack-fraction": 1.0, "inject-attack": "random", "inject-attack-scale": 10.0}
    ruined = tiny(root / "keep-best-ruined", **selecting, **noise)  # every update is noise
    first = [*straight.values(), *curves.values(), *halves.values(), every, early]
    simulate([*first, best, best_half, ruined], NODES, 2, progress=False)
    resumed = {n: {**v, "num-rounds": 4, "resume": True} for n, v in halves.items()}
    early_before = _results(early)
    early_resumed = {**early, "num-rounds": 6, "resume": True}
    best_resumed = {**best_half, "num-rounds": 4, "resume": True}
    simulate([*resumed.values(), early_resumed, best_resumed], NODES, 2, progress=False)
    runs = {n: (straight[n], resumed[n], curves[n]) for n in STRATEGIES}
    return {
        **runs,
        "early-stop": (every, early, early_before),
        "keep-best": (best, best_resumed, ruined),
    }


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


def test_fedgeo_control_variates_change_the_training(runs):
    """The clients correct their gradients with the control variates FedGeo sends."""
    plain = load_checkpoint(Path(runs["fedgeo"][0]["out-dir"]))
    corrected = load_checkpoint(Path(runs["fedgeo-control-variates"][0]["out-dir"]))
    assert any(not np.array_equal(plain.arrays[k], corrected.arrays[k]) for k in plain.arrays)
    state = pickle.loads(corrected.strategy_state)["state"]
    control = pickle.loads(state["control"])
    assert set(control) == set(corrected.arrays)
    assert any(np.abs(c).max() > 0 for c in control.values())  # the clients' control changes
    assert pickle.loads(pickle.loads(plain.strategy_state)["state"]["control"]) is None


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


def test_keep_best_model_tests_the_best_validated_model(runs):
    """``keep-best-model``: the starting model is validated as round 0, every check
    validates the same clients, and the final test is that of the model with the best
    validation MRR (the test curve, of the model after each round, says which)."""
    best = _results(runs["keep-best"][0])
    checks = best["evaluation"]
    assert [e["round"] for e in checks] == [0, 1, 2, 3, 4]
    assert len({e["samples"] for e in checks}) == 1  # the same clients every check
    mrr = [e["mrr"] for e in checks]
    chosen = mrr.index(max(mrr))  # the first of equal checks wins
    assert best["best_model"] == {"metric": "mrr", "best": max(mrr), "round": chosen}
    assert best["tested_round"] == chosen
    if chosen > 0:
        point = best["test_curve"][chosen - 1]
        assert {"round": chosen, **best["test"]} == pytest.approx(point, abs=1e-12)
    assert [p["round"] for p in best["test_curve"]] == [1, 2, 3, 4]


def test_keep_best_model_keeps_the_starting_model_when_training_only_hurts(runs):
    """When every client returns noise (a simulated attack), the untrained model is the
    best validated one and the one tested; the curve's last point is the last model's."""
    ruined = _results(runs["keep-best"][2])
    mrr = [e["mrr"] for e in ruined["evaluation"]]
    assert mrr[0] > max(mrr[1:])
    assert ruined["tested_round"] == 0 and ruined["best_model"]["round"] == 0
    assert ruined["test"]["mrr"] > ruined["test_curve"][-1]["mrr"]


def test_keep_best_model_survives_a_resume(runs):
    """The best arrays live in the checkpoint: a run resumed after round 2 selects and
    tests exactly what the uninterrupted run does."""
    straight, resumed = (_results(v) for v in runs["keep-best"][:2])
    assert resumed["resumed_at"] == [3]
    assert resumed["evaluation"] == pytest.approx(straight["evaluation"], abs=1e-12)
    assert resumed["best_model"] == straight["best_model"]
    assert resumed["test"] == pytest.approx(straight["test"], abs=1e-12)
