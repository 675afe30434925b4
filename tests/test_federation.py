"""End-to-end federations through Flower's simulation engine, the `fedgeo simulate`
command, and the pieces around them (run config, data sources, profile privacy).

Every strategy runs in ONE start of the simulation engine (Ray starts once), on a tiny
synthetic city with a tiny model, so the whole file stays fast.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from procfs import marked_processes
from tiny import NODES, TINY_RUN

from client.data_source import client_source, read_places_csv
from client.local_training import PROFILE_KEYS, privatize
from experiments.simulate_cli import simulate
from fedgeo.metrics import BREAKDOWN_KEYS, METRIC_KEYS
from fedgeo.models import SampleIndex, build_model
from fedgeo.training import evaluate
from server.app import prepare, simulation_dataset
from server.checkpoint import load_checkpoint
from server.defaults import DEFAULTS
from server.run_config import RunConfig
from server.strategies import STRATEGY_NAMES

REPO = Path(__file__).resolve().parents[1]
TINY = {**TINY_RUN, "num-rounds": 2, "fedgeo-midpoint": 6.0}


def tiny(out: Path, **overrides) -> dict:
    """A tiny run writing to ``out`` (clients keep their state in files under it)."""
    return {**TINY, "out-dir": str(out), "client-state-dir": str(out / "client-state"), **overrides}


class TamperGrid:
    """Delegates to a grid; rewrites one run's prior checksum on the way out."""

    def __init__(self, grid, run_key: str) -> None:
        self.grid, self.run_key = grid, run_key

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        messages = list(messages)
        for message in messages:
            config = message.content.get("config")
            if config is not None and config.get("run-key") == self.run_key:
                config["prior-checksum"] = "not-the-servers-prior"
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("federation")
    plan = {name: tiny(root / name, strategy=name) for name in STRATEGY_NAMES}
    plan["fedavg-again"] = tiny(root / "fedavg-again", strategy="fedavg")
    plan["fedavg-exact"] = tiny(
        root / "fedavg-exact", strategy="fedavg", **{"model-user-embedding": False}
    )
    plan["bad-prior"] = tiny(root / "bad-prior", strategy="fedavg")
    plan["faulty"] = tiny(root / "faulty", strategy="fedavg", **{"inject-failure-fraction": 0.5})
    plan["attacked"] = tiny(
        root / "attacked",
        strategy="fedavg",
        **{
            "inject-attack-fraction": 0.5,
            "inject-attack": "scale",
            "inject-attack-scale": 1e4,
            "max-update-norm": 100.0,
        },
    )
    bad_key = RunConfig.from_mapping(plan["bad-prior"]).run_key()
    results = simulate(
        list(plan.values()),
        NODES,
        2,
        progress=False,
        grid_wrapper=lambda grid: TamperGrid(grid, bad_key),
    )
    return {
        name: {"results": r, "values": plan[name]} for name, r in zip(plan, results, strict=True)
    }


def final_arrays(values: dict) -> dict[str, np.ndarray]:
    return load_checkpoint(Path(values["out-dir"])).arrays


def initial_arrays(values: dict) -> dict[str, np.ndarray]:
    return prepare(RunConfig.from_mapping(values)).arrays


def test_tiny_city_has_one_user_per_node():
    assert len(simulation_dataset(RunConfig.from_mapping(TINY)).users) == NODES


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_runs_its_rounds(runs, name):
    results = runs[name]["results"]
    dataset = simulation_dataset(RunConfig.from_mapping(runs[name]["values"]))
    assert results["strategy"] == name
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert record["failures"] == 0 and record["missing"] == 0
        assert record["skipped"] is None
        assert record["replies"] == record["participation"]["sampled"] > 0
        assert math.isfinite(record["train"]["train-loss"])
        assert record["seconds"] > 0
    assert [e["round"] for e in results["evaluation"]] == [1, 2]
    assert set(results["validation"]) == {*METRIC_KEYS, *BREAKDOWN_KEYS}
    assert results["validation"]["samples"] == dataset.num_samples("validation")
    assert list(results["test"]) == [*METRIC_KEYS, *BREAKDOWN_KEYS]
    assert results["test"]["samples"] == dataset.num_samples("test")
    assert results["test_failures"] == 0
    assert 0.0 <= results["test"]["acc@1"] <= results["test"]["acc@10"] <= 1.0
    assert len(results["timings_s"]["rounds"]) == 2


@pytest.mark.parametrize("name", [n for n in STRATEGY_NAMES if n != "local"])
def test_federated_strategies_move_the_global_model(runs, name):
    start, end = initial_arrays(runs[name]["values"]), final_arrays(runs[name]["values"])
    assert set(start) == set(end)
    assert any(not np.array_equal(start[k], end[k]) for k in start)


def test_local_only_keeps_the_global_model_and_sends_no_arrays(runs):
    values = runs["local"]["values"]
    start, end = initial_arrays(values), final_arrays(values)
    assert all(np.array_equal(start[k], end[k]) for k in start)
    # Each client trained its own model: its local state holds the full model.
    folders = list((Path(values["client-state-dir"])).glob("*/client-*"))
    assert len(folders) == NODES
    with np.load(sorted(folders[0].glob("round-*.npz"))[-1]) as state:
        assert any(k.startswith("local.") for k in state.files)


def test_fedgeo_reports_participation_probabilities(runs):
    results = runs["fedgeo"]["results"]
    probabilities = results["participation"]["probabilities"]
    assert probabilities["nodes"] == NODES
    assert 0.05 <= probabilities["min"] <= probabilities["max"] <= 1.0
    assert set(probabilities["by_node"]) == {str(i) for i in range(1, NODES + 1)}
    assert results["participation"]["per_round"] == [
        r["participation"]["sampled"] for r in results["rounds"]
    ]


def test_same_seed_gives_the_same_results(runs):
    first, again = runs["fedavg"]["results"], runs["fedavg-again"]["results"]
    for a, b in zip(first["rounds"], again["rounds"], strict=True):
        assert a["train"] == b["train"]
        assert a["evaluate"] == b["evaluate"]
        assert a["participation"]["nodes"] == b["participation"]["nodes"]
    assert first["test"] == again["test"]
    x, y = final_arrays(runs["fedavg"]["values"]), final_arrays(runs["fedavg-again"]["values"])
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_federated_test_metrics_are_the_exact_micro_average(runs):
    values = runs["fedavg-exact"]["values"]
    config = RunConfig.from_mapping(values)
    dataset = simulation_dataset(config)
    setup_prior = None
    if config.model.uses_prior:
        from fedgeo.geo.prior import AdjacencyPrior

        setup_prior = AdjacencyPrior.from_places(dataset.places, config.prior)
    model, features = build_model(
        dataset.num_places,
        len(dataset.users),
        config.model,
        setup_prior,
        seed=config.seed,
        coordinates=dataset.places.coordinates(),
    )
    arrays = final_arrays(values)
    model.load_shared_state({k: torch.from_numpy(v) for k, v in arrays.items()})
    central = evaluate(model, features, SampleIndex(dataset.users), "test").metrics(True)
    federated = runs["fedavg-exact"]["results"]["test"]
    assert federated["samples"] == central["samples"]
    assert federated["return-samples"] + federated["new-samples"] == federated["samples"]
    assert federated["new-samples"] > 0
    for key in central:  # the overall, return-* and new-* metrics
        assert federated[key] == pytest.approx(central[key], abs=1e-12)


def test_rounds_without_good_replies_keep_the_model(runs):
    results = runs["bad-prior"]["results"]
    for record in results["rounds"]:
        assert record["replies"] == 0
        assert record["failures"] == record["participation"]["sampled"] == NODES
        assert record["skipped"]
        assert "checksum" in record["errors"][0]
        assert record["evaluate"] is None
    values = runs["bad-prior"]["values"]
    start, end = initial_arrays(values), final_arrays(values)
    assert all(np.array_equal(start[k], end[k]) for k in start)
    assert results["test_failures"] == NODES and results["test"]["samples"] == 0


def _cli(args: list[str], marker: str, timeout: float = 300) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "FEDGEO_TEST_MARKER": marker, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "fedgeo.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find processes")
def test_simulate_command_writes_results_and_predictions_and_stops_ray(tmp_path):
    marker = uuid.uuid4().hex
    out = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in TINY.items() if k != "num-rounds"]
    done = _cli(
        ["simulate", "--strategy", "fedgeo", "--rounds", "1", "--out", str(out), "--no-progress"]
        + sets,
        marker,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test acc@1=" in done.stdout
    # Flower's supported engine path, Ray told what it announces: no deprecation noise.
    for warning in ("DeprecationWarning", "FutureWarning", "DEPRECATED"):
        assert warning not in done.stderr, done.stderr[-2000:]
    import json

    import pandas as pd

    results = json.loads((out / "results.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["user_id", "target", "rank"]
    assert len(predictions) == results["test"]["samples"] > 0
    assert predictions["rank"].min() >= 1
    assert (predictions["rank"] <= 1).mean() == pytest.approx(results["test"]["acc@1"])
    assert (1.0 / predictions["rank"]).mean() == pytest.approx(results["test"]["mrr"])
    dataset = simulation_dataset(RunConfig.from_mapping(TINY))
    assert set(predictions["user_id"]) <= {u.user_id for u in dataset.users}
    assert set(predictions["target"]) <= set(dataset.places.ids.tolist())
    # Ray's workers exit right after the command returns: allow them a moment.
    deadline = time.monotonic() + 15
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marked_processes(marker) == []


def test_simulate_command_bad_data_path_is_a_one_line_error(tmp_path, capsys):
    from fedgeo.cli.main import main

    out = tmp_path / "out"
    status = main(
        [
            "simulate",
            "--strategy",
            "fedavg",
            "--data",
            str(tmp_path / "nope.csv"),
            "--out",
            str(out),
        ]
    )
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedgeo: error:") and "nope.csv" in lines[0]
    assert not (out / "results.json").exists()


def test_simulate_command_unknown_key_is_a_usage_error(tmp_path, capsys):
    from fedgeo.cli.main import main

    status = main(
        ["simulate", "--strategy", "fedavg", "--out", str(tmp_path), "--set", "no-such-key=1"]
    )
    assert status == 2
    assert "no-such-key" in capsys.readouterr().err


def test_simulate_command_keep_best_model_flag_sets_the_key(tmp_path):
    from experiments import simulate_cli
    from fedgeo.cli.main import build_parser

    base = ["simulate", "--strategy", "fedavg", "--out", str(tmp_path)]
    chosen = simulate_cli.overrides_from_args(
        build_parser().parse_args([*base, "--keep-best-model"])
    )
    plain = simulate_cli.overrides_from_args(build_parser().parse_args(base))
    assert chosen["keep-best-model"] is True and "keep-best-model" not in plain


# --- run config, data sources, profile privacy ----------------------------------------


def test_pyproject_run_config_equals_the_defaults():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    flwr = pyproject["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    assert flwr["config"] == DEFAULTS


def test_run_config_coerces_strings_and_rejects_unknown_keys():
    config = RunConfig.from_mapping({"num-rounds": "5", "model-hidden-dim": "16", "eta": "0.5"})
    assert config.num_rounds == 5 and config.model.hidden_dim == 16 and config["eta"] == 0.5
    with pytest.raises(ValueError, match="no-such-key"):
        RunConfig.from_mapping({"no-such-key": 1})
    with pytest.raises(ValueError, match="num-rounds"):
        RunConfig.from_mapping({"num-rounds": "many"})


def test_scaffold_control_is_checked_and_forwarded_to_the_clients():
    with pytest.raises(ValueError, match="scaffold-control"):
        RunConfig.from_mapping({"scaffold-control": "option-iii"})
    config = RunConfig.from_mapping({"scaffold-control": "option-ii"})
    assert config.train_settings()["scaffold-control"] == "option-ii"


def test_device_reads_its_own_checkins_onto_the_public_place_table(tmp_path):
    config = RunConfig.from_mapping({**TINY, "protocol-split": "per-user"})
    dataset = simulation_dataset(config)
    user = dataset.users[3]
    places = dataset.places
    rows = [
        f"{user.user_id},{places.ids[p]},{float(places.latitude[p])!r},"
        f"{float(places.longitude[p])!r},{t}"
        for p, t in zip(user.places, user.times, strict=True)
    ]
    checkins = tmp_path / "mine.csv"
    checkins.write_text("user_id,location_id,latitude,longitude,timestamp\n" + "\n".join(rows))
    order = np.random.default_rng(0).permutation(len(places))  # file order does not matter
    table = tmp_path / "places.csv"
    table.write_text(
        "location_id,latitude,longitude\n"
        + "\n".join(
            f"{places.ids[i]},{float(places.latitude[i])!r},{float(places.longitude[i])!r}"
            for i in order
        )
    )
    assert np.array_equal(read_places_csv(table).ids, places.ids)
    source = client_source(
        {"data-path": str(checkins), "places-path": str(table)},
        {"data-spec": config.data_spec().to_json()},
        node_id=77,
    )
    assert not source.simulated and source.key == 77
    assert np.array_equal(source.data.user.places, user.places)
    assert np.array_equal(source.data.user.test, user.test)


def test_simulated_node_outside_the_data_set_is_refused():
    spec = RunConfig.from_mapping(TINY).data_spec().to_json()
    with pytest.raises(ValueError, match="partition id 8"):
        client_source({"partition-id": NODES}, {"data-spec": spec}, node_id=1)


def test_profile_ldp_noise_is_bounded_and_scaled_by_epsilon():
    profile = {
        "checkins": 80.0,
        "distinct_places": 12.0,
        "entropy": 0.6,
        "radius_of_gyration_km": 3.0,
    }
    rng = np.random.default_rng(0)
    draws = [privatize(profile, 2.0, 50.0, rng) for _ in range(4000)]
    for key in PROFILE_KEYS:
        values = np.array([d[key] for d in draws])
        assert values.min() >= 0.0
    entropy = np.array([d["entropy"] for d in draws])
    assert entropy.max() <= 1.0
    # Laplace scale for the counts: sensitivity 1 / (epsilon / 4) = 2.
    checkins = np.array([d["checkins"] for d in draws])
    assert np.mean(np.abs(checkins - 80.0)) == pytest.approx(2.0, rel=0.1)
    precise = [privatize(profile, 1e6, 50.0, rng)["distinct_places"] for _ in range(10)]
    assert np.allclose(precise, 12.0, atol=1e-3)
    with pytest.raises(ValueError):
        privatize(profile, 0.0, 50.0, rng)


def test_simulate_resume_with_other_options_is_refused_before_starting(tmp_path, capsys):
    from fedgeo.cli.main import main
    from server.checkpoint import Checkpoint, save_checkpoint

    args = ["simulate", "--strategy", "fedavg", "--out", str(tmp_path), "--no-progress"]
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    first = RunConfig.from_mapping(
        {
            **TINY,
            "strategy": "fedavg",
            "seed": 1,
            "research-mode": True,
            "client-state-dir": str(tmp_path / "client-state"),
        }
    )
    save_checkpoint(tmp_path, Checkpoint(1, {}, b"", {}, dict(first.values)))
    status = main([*args, *sets, "--seed", "2", "--resume"])
    assert status == 2
    assert "differ from the checkpoint's in seed" in capsys.readouterr().err


def test_injected_failures_are_counted_and_the_rounds_complete(runs):
    from client.faults import fails_this_round

    results = runs["faulty"]["results"]
    config = {"inject-failure-fraction": 0.5}
    for record in results["rounds"]:
        expected = sum(fails_this_round(config, 0, record["round"], k) for k in range(NODES))
        assert record["failures"] == expected > 0
        assert record["replies"] == NODES - expected and record["skipped"] is None
        assert all("injected failure" in e for e in record["errors"])
    assert math.isfinite(results["test"]["mrr"])


def test_attackers_beyond_the_norm_bound_are_rejected_not_averaged(runs):
    from client.faults import is_attacker

    results = runs["attacked"]["results"]
    attackers = sum(is_attacker({"inject-attack-fraction": 0.5}, 0, k) for k in range(NODES))
    assert 0 < attackers < NODES
    for record in results["rounds"]:
        assert record["rejected"] == attackers
        assert all("exceeds the bound" in r for r in record["rejections"])
        assert record["skipped"] is None
    final = final_arrays(runs["attacked"]["values"])
    assert all(np.all(np.isfinite(v)) for v in final.values())
    assert max(float(np.abs(v).max()) for v in final.values()) < 100.0
