"""Experiment configs, run planning and the report (tables, CSV, plots)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.config import ROOT, ConfigError, load_config
from experiments.newplace_screen import (
    FEATURES,
    OWN_DENSITY_KM,
    NewPlaceSamples,
    fit_conditional_logit,
    gravity_scores,
    logit_scores,
    new_place_metrics,
    new_place_samples,
    population_counts,
    ranking_features,
    training_popularity,
)
from experiments.report import markdown_table, summarize, write_report
from experiments.run import (
    RESUME_ONLY,
    main,
    parse_settings,
    plan,
    prune_finished,
    run_values,
    with_settings,
)
from fedgeo.data.dataset import SLOT_HOURS, Dataset, Places, UserData
from server.run_config import RunConfig

CONFIGS = sorted((ROOT / "experiments" / "configs").glob("*.toml"))

SMALL = """
name = "small"
seeds = [0, 1]
[run]
synthetic-num-users = 12
synthetic-num-places = 60
synthetic-days = 20
num-rounds = 2
[sweep]
key = "synthetic-extreme-fraction"
values = [0.0, 0.5]
[[method]]
name = "fedavg"
label = "FedAvg"
strategy = "fedavg"
set = { model-prior-init = false }
[[method]]
name = "markov"
kind = "baseline"
predictor = "markov"
"""


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_parse_and_every_run_has_a_valid_run_config(path: Path) -> None:
    config = load_config(path)
    runs = plan(config, Path("/nonexistent"))
    assert len(runs) == len(config.methods) * len(config.variants()) * len(config.seeds)
    for run in runs:
        RunConfig.from_mapping(run_values(config, run))  # raises on an unknown key


def test_plan_layout_and_override_precedence(small_config: Path, tmp_path: Path) -> None:
    config = load_config(small_config)
    runs = plan(config, tmp_path / "out", methods=["fedavg"], seeds=[1])
    assert [r.out_dir.relative_to(tmp_path / "out").as_posix() for r in runs] == [
        "small/fedavg/synthetic-extreme-fraction=0.0/seed1",
        "small/fedavg/synthetic-extreme-fraction=0.5/seed1",
    ]
    values = run_values(config, runs[1])
    assert values["synthetic-extreme-fraction"] == 0.5  # the sweep value
    assert values["model-prior-init"] is False  # the method's own key
    assert values["num-rounds"] == 2 and values["seed"] == 1
    assert values["strategy"] == "fedavg" and values["resume"] is False


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("seeds = [0]\n[[method]]\nname='a'\nstrategy='fedavg'\n", "'name'"),
        ("name='x'\nseeds=[0]\n[[method]]\nname='a'\n", "'strategy'"),
        ("name='x'\nseeds=[0]\n[[method]]\nname='a'\nkind='nope'\n", "'kind'"),
        ("name='x'\nseeds=[]\n[[method]]\nname='a'\nstrategy='fedavg'\n", "'seeds'"),
        ("name = \n", "not valid TOML"),
        (
            "name='x'\nformat='gpx'\nseeds=[0]\n[[method]]\nname='a'\nstrategy='fedavg'\n",
            "'format'",
        ),
        (
            "name='x'\nseeds=[0]\n[run]\ndata-format='snap'\n[[method]]\nname='a'\n"
            "strategy='fedavg'\n",
            "'data-format' is set by the runner: use the top-level key 'format'",
        ),
        (
            "name='x'\nseeds=[0]\n[[method]]\nname='a'\nstrategy='fedavg'\nset={seed=3}\n",
            "'seed' is set by the runner: use the top-level key 'seeds'",
        ),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=field) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_bad_config_exits_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name='x'\n", encoding="utf-8")
    assert main([str(path), "--out", str(tmp_path)]) == 2
    assert "missing field 'seeds'" in capsys.readouterr().err


def _fake_federated(
    out: Path, acc: float, rounds: list[float], breakdown: bool = False, curve: bool = False
) -> None:
    out.mkdir(parents=True)
    test = {"acc@1": acc, "acc@5": acc + 0.2, "acc@10": acc + 0.3, "mrr": acc + 0.1}
    test |= {"ndcg@10": acc + 0.15, "samples": 10}
    if breakdown:
        test |= {f"return-{k}": acc + 0.05 for k in ("acc@1", "acc@10", "mrr")}
        test |= {f"new-{k}": acc / 10 for k in ("acc@1", "acc@10", "mrr")}
        test |= {"return-samples": 8, "new-samples": 2}
    history = [{"round": i + 1, "failures": 1, "rejected": 0} for i in range(len(rounds))]
    evaluation = [{"round": i + 1, "acc@1": acc * (i + 1) / len(rounds)} for i in range(2)]
    result = {
        "test": test,
        "rounds": history,
        "evaluation": evaluation,
        "timings_s": {"rounds": rounds, "total": sum(rounds)},
    }
    if curve:  # test of every client after round 1, then the final test
        result["test_curve"] = [{"round": 1, "acc@1": acc / 2, "mrr": acc}, {"round": 2, **test}]
    (out / "results.json").write_text(json.dumps(result), encoding="utf-8")
    (out / "predictions.csv").write_text(
        "user_id,target,rank\n1,5,1\n1,6,3\n2,5,2\n", encoding="utf-8"
    )


def test_report_means_stds_table_and_plots(small_config: Path, tmp_path: Path) -> None:
    config = load_config(small_config)
    out = tmp_path / "out"
    accs = {0: 0.2, 1: 0.4}
    for run in plan(config, out, methods=["fedavg"]):
        _fake_federated(run.out_dir, accs[run.seed], [1.0, 3.0])
    figures = tmp_path / "figures"
    table = write_report(config, out, figures=figures)
    rows = list(csv.DictReader((out / "small" / "runs.csv").open()))
    assert len(rows) == 4 and {r["failures"] for r in rows} == {"2"}
    summary = list(csv.DictReader((out / "small" / "summary.csv").open()))
    assert [float(s["acc@1"]) for s in summary] == pytest.approx([0.3, 0.3])
    assert float(summary[0]["acc@1_std"]) == pytest.approx(0.1414, abs=1e-4)
    assert float(summary[0]["round_s"]) == pytest.approx(2.0)
    assert "0.3000 ± 0.1414" in table and "synthetic-extreme-fraction=0.5" in table
    assert (out / "small" / "table.md").read_text() == table
    made = {p.name for p in figures.iterdir()}
    assert {"curves.png", "client_accuracy.png", "sweep.png", "methods.png"} <= made


def test_report_adds_the_return_and_new_place_table_when_runs_have_it(
    small_config: Path, tmp_path: Path
) -> None:
    config = load_config(small_config)
    out = tmp_path / "out"
    accs = {0: 0.2, 1: 0.4}
    for run in plan(config, out, methods=["fedavg"]):
        # Only the runs of one sweep value carry the breakdown (as older runs lack it).
        _fake_federated(run.out_dir, accs[run.seed], [1.0], breakdown=run.variant.endswith("0.5"))
    table = write_report(config, out)
    head, _, breakdown = table.partition("**Return and new-place targets**")
    assert "0.3000 ± 0.1414" in head
    rows = [line for line in breakdown.splitlines() if line.startswith("| FedAvg")]
    assert len(rows) == 1 and "synthetic-extreme-fraction=0.5" in rows[0]
    assert "0.3500 ± 0.1414" in rows[0] and "0.0300 ± 0.0141" in rows[0]
    summary = list(csv.DictReader((out / "small" / "summary.csv").open()))
    assert [s["new-mrr"] for s in summary][0] == "nan"
    assert float(summary[1]["new-mrr"]) == pytest.approx(0.03)


def test_report_adds_test_curves_when_runs_have_them(small_config: Path, tmp_path: Path) -> None:
    config = load_config(small_config)
    out = tmp_path / "out"
    accs = {0: 0.2, 1: 0.4}
    for run in plan(config, out, methods=["fedavg"]):
        _fake_federated(run.out_dir, accs[run.seed], [1.0, 2.0], curve=run.variant.endswith("0.5"))
    figures = tmp_path / "figures"
    table = write_report(config, out, figures=figures)
    _, _, curves = table.partition("**Test Acc@1 / MRR of every client by round**")
    assert "| method | round 1 | round 2 |" in curves
    rows = [line for line in curves.splitlines() if line.startswith("| FedAvg")]
    assert rows == ["| FedAvg (synthetic-extreme-fraction=0.5) | 0.1500 ± 0.0707 / 0.3000 | "
                    "0.3000 ± 0.1414 / 0.4000 |"]  # fmt: skip
    assert "test_curves.png" in {p.name for p in figures.iterdir()}
    for run in plan(config, out, methods=["fedavg"]):  # no run with a curve: no table, no plot
        _fake_federated(tmp_path / "plain" / run.out_dir.relative_to(out), 0.3, [1.0])
    assert "by round" not in write_report(config, tmp_path / "plain")
    assert not (tmp_path / "plain" / "small" / "test_curves.png").exists()


def test_markdown_table_bolds_the_best_mean() -> None:
    rows = [
        {"method": m, "label": m, "variant": "", "seed": s, "round_s": 1.0}
        | {k: v for k in ("acc@1", "acc@5", "acc@10", "mrr", "ndcg@10")}
        for m, v, s in (("a", 0.1, 0), ("a", 0.3, 1), ("b", 0.25, 0), ("b", 0.25, 1))
    ]
    table = markdown_table(summarize(rows), "t")
    line_b = next(line for line in table.splitlines() if line.startswith("| b"))
    line_a = next(line for line in table.splitlines() if line.startswith("| a"))
    assert "**0.2500 ± 0.0000**" in line_b and "**" not in line_a


def test_reference_runs_in_process_and_are_skipped_once_done(
    small_config: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = [str(small_config), "--out", str(out), "--only", "markov", "--seeds", "0"]
    assert main(args) == 0
    [first, second] = plan(load_config(small_config), out, methods=["markov"], seeds=[0])
    assert first.done and second.done
    metrics = json.loads(first.result_file.read_text())
    assert 0.0 <= metrics["test"]["acc@1"] <= 1.0 and metrics["test"]["samples"] > 0
    assert "[small] markov" in capsys.readouterr().out
    stamp = first.result_file.stat().st_mtime_ns
    assert main(args) == 0
    assert first.result_file.stat().st_mtime_ns == stamp  # finished runs are not redone
    assert "[small] markov" not in capsys.readouterr().out


def test_a_federated_run_is_done_only_with_its_final_test_and_then_pruned(
    small_config: Path, tmp_path: Path
) -> None:
    """results.json is written after every round: a run stopped mid-way (no final test)
    is not done, so running the command again resumes it; a finished run loses only its
    resume-only folders."""
    [run, _] = plan(load_config(small_config), tmp_path, methods=["fedavg"], seeds=[0])
    for name in RESUME_ONLY:
        (run.out_dir / name / "client-1").mkdir(parents=True)
    run.result_file.write_text(json.dumps({"rounds": [{"round": 1}]}), encoding="utf-8")
    assert not run.done
    prune_finished([run])
    assert all((run.out_dir / name).is_dir() for name in RESUME_ONLY)  # kept: resumable
    run.result_file.write_text(json.dumps({"rounds": [], "test": {"acc@1": 0.5}}), "utf-8")
    assert run.done
    prune_finished([run])
    assert not any((run.out_dir / name).exists() for name in RESUME_ONLY)
    assert run.result_file.is_file()


def test_untrained_reference_is_the_freshly_built_model(tmp_path: Path) -> None:
    # nyc_main's "untrained" row: a centralized method with epochs = 0 must evaluate the
    # model exactly as built (seeded by the run's seed), with no training step.
    from fedgeo.geo.prior import AdjacencyPrior
    from fedgeo.models import SampleIndex, build_model
    from fedgeo.training import evaluate
    from server.app import simulation_dataset

    path = tmp_path / "untrained.toml"
    path.write_text(
        SMALL.split("[sweep]")[0]
        + '[[method]]\nname = "untrained"\nkind = "centralized"\nepochs = 0\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--seeds", "1"]) == 0
    [run] = plan(load_config(path), out, seeds=[1])
    metrics = json.loads(run.result_file.read_text())
    rc = RunConfig.from_mapping(run_values(load_config(path), run))
    dataset = simulation_dataset(rc)
    prior = AdjacencyPrior.from_places(dataset.places, rc.prior)
    model, features = build_model(
        len(dataset.places),
        len(dataset.users),
        rc.model,
        prior,
        seed=1,
        coordinates=dataset.places.coordinates(),
    )
    expected = evaluate(model, features, SampleIndex(dataset.users), "test").metrics()
    assert metrics["test"]["acc@1"] == pytest.approx(expected["acc@1"])
    assert metrics["test"]["mrr"] == pytest.approx(expected["mrr"])


def test_return_score_fit_lowers_the_loss_and_lifts_only_visited_places() -> None:
    import numpy as np
    import torch

    from experiments.return_score_fit import fit, scores
    from fedgeo.data.loading import load_dataset
    from fedgeo.data.synthetic import SyntheticConfig
    from fedgeo.models import ModelConfig, SampleIndex, build_model

    dataset, _ = load_dataset(synthetic=SyntheticConfig(num_users=20, num_places=60, days=20))
    _, features = build_model(
        dataset.num_places, 1, ModelConfig(history_scores=False).without_prior(), seed=0
    )
    index = SampleIndex(dataset.users)
    batch = features.build(index, *index.samples("train"))
    memory, target = batch["memory"], batch["target"]
    losses = {}
    for with_return in (False, True):
        bias, ret = fit(memory, target, with_return)
        losses[with_return] = float(
            torch.nn.functional.cross_entropy(scores(memory, bias, ret), target)
        )
    assert losses[True] <= losses[False] + 1e-6
    lifted = scores(memory, bias, torch.tensor(2.0)) - scores(memory, bias, None)
    visited = (memory[:, 0] > 0).numpy()
    assert np.allclose(lifted.numpy()[visited], 2.0) and np.all(lifted.numpy()[~visited] == 0)


def test_design_sweep_reads_model_options() -> None:
    from experiments.design_sweep import model_options

    options = model_options(["prior_gate_bias=0", "prior_score_places=all", "return_score=false"])
    assert options == {"prior_gate_bias": 0, "prior_score_places": "all", "return_score": False}
    with pytest.raises(SystemExit, match="OPTION=VALUE"):
        model_options(["prior_gate_bias"])


@pytest.mark.parametrize("beta_2", [0.99, 0.999])
def test_design_sweep_server_adam_is_flowers_fedadam_step(beta_2: float) -> None:
    """The sweep's server Adam takes Flower's bias-corrected FedAdam step, with the
    second-moment decay of ``--beta-2``."""
    from experiments.design_sweep import ServerAdam

    adam = ServerAdam(eta=0.1, beta_2=beta_2, tau=1e-3)
    delta = torch.tensor([0.5, -2.0])
    m, v = torch.zeros(2), torch.zeros(2)
    for server_round in (1, 2):
        m = 0.9 * m + 0.1 * delta
        v = beta_2 * v + (1 - beta_2) * delta**2
        eta = 0.1 * (1 - beta_2 ** (server_round + 1)) ** 0.5 / (1 - 0.9 ** (server_round + 1))
        step = adam.step("w", delta, server_round)
        assert torch.allclose(step, eta * m / (v.sqrt() + 1e-3))


def test_design_sweep_fedexp_step_grows_when_client_updates_disagree() -> None:
    """FedExP: agreeing updates give the plain step 1; updates that cancel out in the
    aggregate give mean |d_i|^2 / (2 |d|^2)."""
    from experiments.design_sweep import fedexp_step

    state = {"w": torch.zeros(2), "steps": torch.tensor(3)}
    same = [({"w": np.array([1.0, 0.0])}, 5), ({"w": np.array([1.0, 0.0])}, 5)]
    assert fedexp_step(state, same, {"w": np.array([1.0, 0.0])}, 1e-12) == 1.0
    apart = [({"w": np.array([1.0, 0.0])}, 5), ({"w": np.array([0.0, 1.0])}, 5)]
    step = fedexp_step(state, apart, {"w": np.array([0.5, 0.5])}, 1e-12)
    assert step == pytest.approx(1.0 / (2 * 0.5))  # mean |d_i|^2 = 1, |d|^2 = 0.5
    opposite = [({"w": np.array([1.0, 0.0])}, 5), ({"w": np.array([-0.9, 0.0])}, 5)]
    assert fedexp_step(state, opposite, {"w": np.array([0.05, 0.0])}, 1e-12) > 100


def test_design_sweep_visited_rows_average_only_the_clients_holding_a_place() -> None:
    """``--place-rows visited``: a place-table row is the example-weighted mean over the
    clients that saw the place; a row nobody saw keeps the global value; other arrays
    keep the aggregator's result."""
    from experiments.design_sweep import visited_row_mean

    old = {"place_bias": torch.zeros(3), "query.0.bias": torch.zeros(1)}
    a = {"place_bias": np.array([1.0, 2.0, 3.0], dtype=np.float32), "query.0.bias": np.ones(1)}
    b = {"place_bias": np.array([5.0, 6.0, 7.0], dtype=np.float32), "query.0.bias": np.ones(1)}
    aggregate = {"place_bias": np.full(3, 9.0, dtype=np.float32), "query.0.bias": np.full(1, 4.0)}
    visited_row_mean(aggregate, old, [(a, 1), (b, 3)], [np.array([0, 1]), np.array([1])])
    assert aggregate["place_bias"].tolist() == [1.0, (2.0 + 3 * 6.0) / 4, 0.0]
    assert aggregate["place_bias"].dtype == np.float32
    assert aggregate["query.0.bias"].tolist() == [4.0]


def test_design_sweep_shared_moment_adam_is_adam_until_the_server_sends_moments() -> None:
    """Without a server moment the optimizer takes torch's Adam steps; with one, a step is
    ``lr * m_hat / sqrt(v_server)``, linear in the gradient, and the mean squared
    gradients it records are what the server averages."""
    from experiments.design_sweep import SharedMomentAdam, update_shared_moments

    grads = [torch.tensor([0.5, -2.0]), torch.tensor([0.1, 1.0]), torch.tensor([0.3, 0.2])]
    own = torch.nn.Parameter(torch.zeros(2))
    ref = torch.nn.Parameter(torch.zeros(2))
    opt = SharedMomentAdam([("w", own)], lr=0.01, shared_v={})
    adam = torch.optim.Adam([ref], lr=0.01)
    for g in grads:
        own.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        adam.step()
    assert torch.allclose(own.detach(), ref.detach(), atol=1e-7)
    squares = opt.mean_squares({"w"})["w"]
    assert torch.allclose(squares, sum(g * g for g in grads) / 3)

    v = torch.tensor([4.0, 0.25])
    for scale in (1.0, 3.0):
        w = torch.nn.Parameter(torch.zeros(2))
        w.grad = scale * torch.tensor([1.0, 1.0])
        SharedMomentAdam([("w", w)], lr=0.1, shared_v={"w": v}).step()
        assert torch.allclose(w.detach(), -0.1 * scale * torch.tensor([0.5, 2.0]))

    shared: dict[str, torch.Tensor] = {}
    update_shared_moments(shared, [({"w": torch.ones(2)}, 1), ({"w": 3 * torch.ones(2)}, 3)], 0.5)
    assert shared["w"].tolist() == [2.5, 2.5]  # (1 * 1 + 3 * 3) / 4
    update_shared_moments(shared, [({"w": torch.full((2,), 0.5)}, 2)], 0.5)
    assert shared["w"].tolist() == [1.5, 1.5]


def test_design_sweep_groups_users_into_clients_only_without_personal_parts() -> None:
    """``--users-per-client`` pools several users' data in one client; it refuses a model
    with a personal user vector, which one client cannot hold for several users."""
    script = ROOT / "experiments" / "design_sweep.py"
    args = [sys.executable, str(script), "--rounds", "1", "--clients", "2", "--epochs", "1"]
    args += ["--validation-only", "--users-per-client", "3"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert refused.returncode != 0
    assert "--users-per-client > 1 needs --set user_embedding=false" in refused.stderr
    zero = [*args[:-1], "0", "--set", "user_embedding=false"]
    refused = subprocess.run(zero, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert refused.returncode != 0 and "--users-per-client must be >= 1" in refused.stderr
    done = subprocess.run(
        [*args, "--set", "user_embedding=false"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout.splitlines()[0])
    assert first["round"] == 1 and first["participants"] == 2


def test_design_sweep_validation_only_reports_no_test_metrics() -> None:
    """``--validation-only`` (for screening) never computes test metrics."""
    script = ROOT / "experiments" / "design_sweep.py"
    args = ["--rounds", "1", "--clients", "3", "--epochs", "1", "--optimizer", "sgd"]
    args += ["--lr", "0.1", "--server-optimizer", "adam", "--server-lr", "0.01"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--validation-only", "--eval-every", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert final["round"] == "final" and "test" not in final
    assert 0.0 <= final["validation"]["mrr"] <= 1.0 and final["validation"]["samples"] > 0


def test_set_changes_a_key_for_every_run_below_the_methods_own(
    small_config: Path, tmp_path: Path
) -> None:
    """``--set`` reads TOML values, adds them to ``[run]``, names them in the title, and
    a method's own ``set`` still wins."""
    settings = parse_settings(["num-rounds=5", "model-prior-init=true", "strategy-note=a b"])
    assert settings == {"num-rounds": 5, "model-prior-init": True, "strategy-note": "a b"}
    config = with_settings(load_config(small_config), {"num-rounds": 5, "lr": 0.01})
    assert "(with num-rounds = 5, lr = 0.01)" in config.title
    run = plan(config, tmp_path, methods=["fedavg"], seeds=[0])[0]
    values = run_values(config, run)
    assert values["num-rounds"] == 5 and values["lr"] == 0.01
    prior_on = with_settings(load_config(small_config), {"model-prior-init": True})
    assert prior_on.title.endswith("(with model-prior-init = true)")
    assert run_values(prior_on, run)["model-prior-init"] is False  # the method's own


def test_data_option_runs_the_config_on_another_file(small_config: Path, tmp_path: Path) -> None:
    """``--data`` replaces the config's check-in file for every run and names it in the
    title; without it the config is unchanged."""
    from experiments.run import with_data

    config = load_config(small_config)
    assert with_data(config, None) is config
    other = with_data(config, tmp_path / "sparse.csv")
    assert other.title.endswith(f"(on {tmp_path / 'sparse.csv'})")
    run = plan(other, tmp_path, methods=["fedavg"], seeds=[0])[0]
    assert run_values(other, run)["data-path"] == str(tmp_path / "sparse.csv")
    assert run_values(other, run)["data-format"] == "csv"  # the config's (default) format
    snap = with_data(config, tmp_path / "gowalla.txt", "snap")
    assert run_values(snap, run)["data-format"] == "snap"


def test_config_format_reaches_every_run(tmp_path: Path) -> None:
    """The top-level ``format`` is the data-format of every run of the config."""
    path = tmp_path / "raw.toml"
    path.write_text(SMALL.replace("seeds = [0, 1]", 'format = "tsmc2014"\nseeds = [0, 1]'))
    config = load_config(path)
    assert config.data_format == "tsmc2014"
    for run in plan(config, tmp_path):
        assert run_values(config, run)["data-format"] == "tsmc2014"


def test_unreadable_data_file_exits_2_naming_file_and_line(
    small_config: Path, tmp_path: Path, capsys
) -> None:
    """A data file that fails to read stops the runner with the reader's one-line error
    (file and line), not a traceback."""
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,location_id,latitude,longitude,time_min\n1,2,91.0,0.0,5\n")
    args = [str(small_config), "--data", str(bad), "--out", str(tmp_path / "out")]
    assert main([*args, "--only", "markov", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("experiments.run: error: ") and f"{bad}:2" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "num-rounds"], "expected KEY=VALUE"),
        (["--set", "no-such-key=1", "--out", "OUT"], "unknown run-config key(s): no-such-key"),
        (["--set", "num-rounds=x", "--out", "OUT"], "'num-rounds': expected int"),
        (["--set", "num-rounds=3"], "--set needs --out"),
        (["--data", "other.csv"], "--data needs --out"),
        (["--format", "snap"], "--format needs --out"),
        (["--set", "data-format=snap", "--out", "OUT"], "use the top-level key 'format'"),
        (["--data", "OUT/missing.csv", "--out", "OUT"], "missing.csv: data file not found"),
    ],
)
def test_bad_set_exits_2_naming_it(
    small_config: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    assert main([str(small_config), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "small").exists()  # nothing ran


def places_on_a_line(n: int) -> Places:
    """``n`` places on the equator, 0.01 degrees (about 1.1 km) apart."""
    return Places(ids=np.arange(n), latitude=np.zeros(n), longitude=np.arange(n) * 0.01)


def hand_made_user(
    places: list[int], train: list[int] | None = None, validation: list[int] | None = None
):
    """A user with hourly check-ins in one trajectory; by default every position but the
    first and last trains and the last validates."""
    n = len(places)
    return UserData(
        user_id=n,
        places=np.asarray(places, dtype=np.int64),
        times=1_700_000_000 + 3600 * np.arange(n, dtype=np.int64),
        local_offsets=np.zeros(n, dtype=np.int32),
        traj_start=np.zeros(n, dtype=np.int64),
        train=np.asarray(range(1, n - 1) if train is None else train, dtype=np.int64),
        validation=np.asarray([n - 1] if validation is None else validation, dtype=np.int64),
        test=np.array([], dtype=np.int64),
    )


def test_nomemory_screen_reference_rankings_follow_their_definitions() -> None:
    """Popularity ranks by training-target counts; the window copy puts the places of the
    last W check-ins first, the more often visited there the higher."""
    from experiments.nomemory_screen import popularity_ranks, target_counts, window_copy_ranks
    from fedgeo.models import SampleIndex

    # training targets: place 5 four times, places 1 and 2 three times each
    index = SampleIndex(
        [hand_made_user([0, 5, 5, 5, 5, 1, 1, 2, 1]), hand_made_user([3, 2, 1, 2, 3])]
    )
    counts = target_counts(index, num_places=6)
    np.testing.assert_array_equal(counts, [0, 3, 3, 0, 0, 4])
    # user 0's target 1: after 5 (its tie with 2 counts below it); user 1's 3: last of 4
    assert list(popularity_ranks(index, counts)) == [2, 4]
    # window of user 0 before its target: 1, 1, 2 -> place 1 first; user 1's window
    # 2, 1, 2 -> 2 first, then 1, then by popularity 5 before the target 3
    assert list(window_copy_ranks(index, counts, window=3)) == [1, 4]


def test_newplace_screen_ranks_only_unvisited_places_and_distance_ranks_nearest_first() -> None:
    """Only targets the user had not visited count; visited places are not ranked; with
    distance alone the place nearest the last one ranks first; popularity counts each
    user's training prefix."""
    # five places on a line of longitude, about 1.1 km apart
    places = places_on_a_line(5)

    # user 0: validation targets 0 (a return: skipped) and 3 (new, after place 0)
    # user 1: validation target 4 (new, after place 0; places 0 and 1 visited)
    users = [hand_made_user([0, 1, 2, 0, 3], [1, 2], [3, 4]), hand_made_user([1, 0, 4], [1], [2])]
    dataset = Dataset(places, users)
    visitors, checkins = training_popularity(dataset)
    np.testing.assert_array_equal(visitors, [2, 2, 1, 0, 0])
    np.testing.assert_array_equal(checkins, [2, 2, 1, 0, 0])
    samples = new_place_samples(dataset, "validation")
    np.testing.assert_array_equal(samples.target, [3, 4])
    np.testing.assert_array_equal(samples.visited[0], [True, True, True, False, False])
    assert samples.d_last[0, 3] == pytest.approx(3 * 1.112, abs=0.01)
    distance = gravity_scores(samples, visitors, checkins, a=0, c=0, b1=1, b2=0, eps=0.05)
    metrics = new_place_metrics(distance, samples)
    # user 0: of the unvisited 3 and 4, 3 is nearer to 0 -> rank 1; user 1: from 0, the
    # unvisited 2 and 3 are nearer than 4 -> rank 3
    assert metrics["new-acc@1"] == 0.5
    assert metrics["new-mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["samples"] == 2


def test_newplace_screen_population_features_count_only_the_other_users() -> None:
    """The conditional logit's features count the other users' training prefixes: the
    sample's own user is taken out of co-visitors, transitions and visitors."""
    places = places_on_a_line(6)
    users = [
        hand_made_user([0, 1, 2, 0, 3], [1, 2], [3, 4]),  # prefix 0 1 2; target 3 after 0
        hand_made_user([1, 0, 4], [1], [2]),  # prefix 1 0
        hand_made_user([0, 3, 5], [1, 2], []),  # prefix 0 3 5
    ]
    dataset = Dataset(places, users)
    counts = population_counts(dataset)
    np.testing.assert_array_equal(counts.visitors, [3, 2, 1, 1, 0, 1])
    np.testing.assert_array_equal(counts.co_visitors[0].toarray().ravel(), [0, 2, 1, 1, 0, 1])
    np.testing.assert_array_equal(counts.transitions[0].toarray().ravel(), [0, 1, 0, 1, 0, 0])

    samples = new_place_samples(dataset, "validation")
    np.testing.assert_array_equal(samples.user, [0, 1])
    features = ranking_features(samples, dataset, counts)
    column = {name: i for i, name in enumerate(FEATURES)}
    first = features[0]  # user 0, last place 0
    # co-visitors of 0 among the others (users 1 and 2): 1 -> 1, 3 -> 1, 5 -> 1, 2 -> 0
    np.testing.assert_allclose(
        first[:, column["co-visitors of the last place"]], np.log1p([0, 1, 0, 1, 0, 1])
    )
    # user 0's own move 0 -> 1 is taken out; user 2's 0 -> 3 stays
    np.testing.assert_allclose(
        first[:, column["transitions from the last place"]], np.log1p([0, 0, 0, 1, 0, 0])
    )
    np.testing.assert_allclose(first[:, column["visitors"]], np.log1p([2, 1, 0, 1, 0, 1]))
    # mean over user 0's places 0, 1, 2 of the others' co-visitors
    others = np.array([[0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(first[:, column["co-visitors"]], np.log1p(others.mean(0)), rtol=1e-6)


def test_newplace_screen_own_place_features_read_the_users_past_only() -> None:
    """The own-place features are the distance to the nearest place the user visited before
    the sample and the kernel density of those check-ins, counted by visits."""
    places = places_on_a_line(5)
    # validation target 4 after 0, 1, 0: places 0 (twice) and 1 visited; 3 is visited later
    users = [hand_made_user([0, 1, 0, 4, 3], [1, 2], [3])]
    dataset = Dataset(places, users)
    samples = new_place_samples(dataset, "validation")
    step = samples.d_last[0, 1]  # about 1.1 km between neighbours
    np.testing.assert_allclose(samples.d_own[0], [0, 0, step, 2 * step, 3 * step], rtol=1e-4)
    kernel = np.exp(-(((np.arange(5)[:, None] - [0, 1]) * step) ** 2) / (2 * OWN_DENSITY_KM**2))
    np.testing.assert_allclose(samples.own_density[0], kernel @ [2, 1] / 3, rtol=1e-4)
    features = ranking_features(samples, dataset, population_counts(dataset))
    column = {name: i for i, name in enumerate(FEATURES)}
    np.testing.assert_allclose(
        features[0, :, column["-log km from the nearest own place"]],
        -np.log(samples.d_own[0] + 0.05),
        rtol=1e-5,
    )


def test_newplace_screen_time_and_scale_features_follow_their_definitions() -> None:
    """Visitors at the target's block of the day count the other users only; the usual
    move is the median of the user's past moves; the distance's decay is scaled by the
    log hours since the last check-in; ``late_half`` keeps the later targets only."""
    places = places_on_a_line(6)
    # hourly check-ins: user 0's target 4 (position 4) is at the same hour of the day as
    # nobody else's check-in but user 2's place 5, checked in SLOT_HOURS * k hours apart
    users = [
        hand_made_user([0, 1, 2, 0, 4], [1, 2], [3, 4]),
        hand_made_user([5, 3, 4], [1, 2], []),
        hand_made_user([5, 3, 1], [1, 2], []),
    ]
    dataset = Dataset(places, users)
    counts = population_counts(dataset)
    samples = new_place_samples(dataset, "validation")
    np.testing.assert_array_equal(samples.target, [4])
    np.testing.assert_allclose(samples.gap_hours, [1.0])
    step = samples.d_last[0, 1]  # about 1.1 km between neighbours
    # user 0's moves before the target: 0->1, 1->2, 2->0: 1, 1 and 2 steps, median 1 step
    np.testing.assert_allclose(samples.usual_km, [step], rtol=1e-4)
    features = ranking_features(samples, dataset, counts)
    column = {name: i for i, name in enumerate(FEATURES)}
    block = int(samples.day_block[0])
    others_here = np.zeros(6)
    for other in users[1:]:  # every check-in of users 1 and 2 is in their training prefix
        hours = (other.local_times() // 3600) % 24 // SLOT_HOURS
        others_here[np.unique(other.places[hours == block])] += 1
    np.testing.assert_allclose(
        features[0, :, column["visitors at this time of day"]], np.log1p(others_here)
    )
    np.testing.assert_allclose(
        features[0, :, column["-km / the user's usual move"]], -samples.d_last[0] / step, rtol=1e-4
    )
    np.testing.assert_allclose(
        features[0, :, column["-log km x log hours since the last check-in"]],
        -np.log(samples.d_last[0] + 0.05) * np.log(2.0),
        rtol=1e-5,
    )
    # late_half keeps training targets in the later half of each user's training range
    late = new_place_samples(dataset, "train", late_half=True)
    assert all(p == 2 for p in late.position)


def test_newplace_screen_conditional_logit_learns_the_feature_that_marks_targets() -> None:
    """Fitted by maximum likelihood over the unvisited places, the logit puts a positive
    weight on a feature that marks each target and then ranks the targets first."""
    rng = np.random.default_rng(0)
    n, num_places = 40, 8
    target = rng.integers(1, num_places, n)
    visited = np.zeros((n, num_places), dtype=bool)
    visited[:, 0] = True
    features = rng.normal(size=(n, num_places, len(FEATURES))).astype(np.float32)
    features[np.arange(n), target, 0] += 5.0
    zeros, per_sample = np.zeros((n, num_places)), np.ones(n)
    samples = NewPlaceSamples(
        zeros,
        zeros,
        visited,
        target,
        np.zeros(n, int),
        np.ones(n, int),
        zeros,
        zeros,
        np.zeros(n, int),
        per_sample,
        per_sample,
    )
    weights, mean, std = fit_conditional_logit(features, samples, (FEATURES[0],))
    assert weights[0] > 0 and not weights[1:].any()
    metrics = new_place_metrics(logit_scores(features, weights, mean, std), samples)
    assert metrics["new-acc@1"] > 0.9
