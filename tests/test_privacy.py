"""Differential privacy of the model updates (server.privacy), its accounting
(fedgeo.privacy) and the privacy block of results.json.

Everything is in-process except ONE start of the simulation engine (module fixture
``runs``), which runs a server-side DP federation, resumes it, and a client-side one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fakes import NodesGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant
from tiny import NODES, TINY_RUN

from fedgeo.privacy import (
    ALPHAS,
    default_delta,
    effective_noise_multiplier,
    rdp_epsilon,
    round_sample_size,
)
from server.privacy import (
    ClientSideDP,
    DPSettings,
    PrivacyLedger,
    ServerSideDP,
    unwrap,
    update_norm,
    wrap,
)
from server.run_config import RunConfig
from server.strategies import ExclusionConfig, FedGeo, build_strategy

TINY = {**TINY_RUN, "num-rounds": 1, "fedgeo-midpoint": 6.0}
CLIP = 0.01
"""Below the tiny model's update norms (about 0.1), so clipping always acts."""


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need the ServerApp's identity, which a real run sets."""
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def numpy_of(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in rec.items()}


def reply(instruction: Message, arrays: dict[str, np.ndarray], num_examples: int) -> Message:
    content = RecordDict(
        {
            "arrays": record(arrays),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0}),
        }
    )
    return Message(content, reply_to=instruction)


GLOBAL = {
    "w": np.zeros((50, 40), dtype=np.float32),
    "b": np.ones(10, dtype=np.float32),
    "gate": np.array(0.5, dtype=np.float32),  # 0-d, like the model's propagation_gate
}


def update(direction_seed: int, norm: float) -> dict[str, np.ndarray]:
    """Global arrays moved by a random step of the given norm."""
    rng = np.random.default_rng(direction_seed)
    steps = {k: rng.normal(size=v.shape) for k, v in GLOBAL.items()}
    total = math.sqrt(sum(float(np.sum(s**2)) for s in steps.values()))
    return {k: (GLOBAL[k] + steps[k] * norm / total).astype(np.float32) for k in GLOBAL}


def dp_round(strategy, server_round: int, norms, examples, nodes=4):
    """One round of ``strategy`` (wrapped) on ``nodes`` nodes with the given updates."""
    messages = list(
        strategy.configure_train(
            server_round, record(GLOBAL), ConfigRecord(), NodesGrid(range(1, nodes + 1))
        )
    )
    replies = [
        reply(m, update(i, norm), n)
        for i, (m, norm, n) in enumerate(zip(messages, norms, examples, strict=True))
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return numpy_of(arrays)


def start(strategy, nodes: int, **kwargs) -> PrivacyLedger:
    ledger = PrivacyLedger(
        DPSettings("server", strategy.noise_multiplier, strategy.clipping_norm, 0.0)
    )
    ledger.start(
        strategy, nodes, seed=kwargs.pop("seed", 0), simulated=kwargs.pop("simulated", True)
    )
    return ledger


# --- accounting --------------------------------------------------------------------------


def test_orders_include_opacus_defaults():
    from fedgeo.privacy import ALPHAS

    assert list(ALPHAS[: len(RDPAccountant.DEFAULT_ALPHAS)]) == RDPAccountant.DEFAULT_ALPHAS


def test_epsilon_matches_opacus_and_the_closed_form():
    # Rounds with fewer replies than expected have a smaller effective multiplier.
    rounds = [(1.1, 0.05)] * 150 + [(0.7, 0.05)] * 20 + [(1.1, 0.05)] * 30
    epsilon, order = rdp_epsilon(rounds, 1e-5)
    accountant = RDPAccountant()
    for z, q in rounds:
        accountant.step(noise_multiplier=z, sample_rate=q)
    assert epsilon == pytest.approx(accountant.get_epsilon(1e-5, alphas=list(ALPHAS)), rel=1e-12)
    # Without sampling the Gaussian mechanism's RDP is T * a / (2 z^2); opacus converts
    # with Balle et al. (2020): eps = rdp + log((a-1)/a) - (log(delta) + log(a)) / (a-1).
    z, steps, delta = 2.0, 30, 1e-6
    alphas = np.asarray(ALPHAS)
    closed = steps * alphas / (2 * z**2) + np.log((alphas - 1) / alphas)
    closed -= (math.log(delta) + np.log(alphas)) / (alphas - 1)
    epsilon, order = rdp_epsilon([(z, 1.0)] * steps, delta)
    assert epsilon == pytest.approx(float(closed.min()), rel=1e-9)
    assert order == alphas[int(closed.argmin())]
    assert 10.0 < epsilon < 20.0


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling():
    eps = [rdp_epsilon([(1.0, 0.1)] * t, 1e-5)[0] for t in (1, 10, 100)]
    assert 0 < eps[0] < eps[1] < eps[2]
    assert rdp_epsilon([(2.0, 0.1)] * 10, 1e-5)[0] < eps[1]
    assert rdp_epsilon([(1.0, 1.0)] * 10, 1e-5)[0] > eps[1]
    assert rdp_epsilon([], 1e-5) == (0.0, None)
    assert rdp_epsilon([(1.0, 0.1), (0.0, 0.1)], 1e-5)[0] == math.inf
    with pytest.raises(ValueError):
        rdp_epsilon([(1.0, 0.1)], 0.0)


def test_sample_size_delta_and_effective_noise():
    assert round_sample_size(10, 0.5, 2) == 5
    assert round_sample_size(10, 0.1, 2) == 2
    assert round_sample_size(3, 1.0, 5) == 3
    assert default_delta(8) == 1e-5 and default_delta(10**6) == 1e-6
    # 3 of 5 expected replies: the mean's sensitivity grows to C/3.
    assert effective_noise_multiplier(1.0, 5, 3) == pytest.approx(0.6)
    assert effective_noise_multiplier(1.0, 5, 5, server_lr=2.0) == pytest.approx(0.5)


# --- settings and which strategies DP accepts ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "extra", "wrapper"),
    [
        ("fedavg", {"dp": "server"}, ServerSideDP),
        ("fedprox", {"dp": "client"}, ClientSideDP),
        ("fedgeo", {"dp": "server", "fedgeo-aggregation": "mean"}, ServerSideDP),
    ],
)
def test_dp_wraps_mean_aggregating_strategies(name, extra, wrapper):
    values = {"strategy": name, **extra, "dp-noise-multiplier": "0.7"}
    strategy = RunConfig.from_mapping(values).build_strategy()
    assert type(strategy) is wrapper
    assert strategy.noise_multiplier == 0.7 and strategy.clipping_norm == 1.0
    assert type(unwrap(strategy)).__name__.lower() == name
    assert type(build_strategy(name, {}, seed=0)) is type(unwrap(strategy))


@pytest.mark.parametrize(
    ("name", "extra", "match"),
    [
        ("fedgeo", {}, "fedgeo-aggregation = 'mean'"),
        ("fedgeo", {"fedgeo-aggregation": "drift-weighted"}, "geometric median"),
        ("fedgeo", {"fedgeo-aggregation": "mean", "fedgeo-dynamic-alpha": 0.01}, "dynamic"),
        ("fedgeo", {"fedgeo-aggregation": "mean", "fedgeo-control-variates": True}, "control"),
        ("fedadam", {}, "FedAdam"),
        ("fedavgm", {}, "FedAvgM"),
        ("scaffold", {}, "Scaffold"),
        ("feddyn", {}, "FedDyn"),
        ("local", {}, "LocalOnly"),
        ("experiments.custom_strategy:TrimmedMean", {}, "TrimmedMean"),
    ],
)
def test_dp_refuses_aggregates_that_are_not_a_plain_mean(name, extra, match):
    with pytest.raises(ValueError, match=match):
        wrap(build_strategy(name, extra, seed=0), DPSettings.from_values({"dp": "server"}))
    # RunConfig refuses it when the config is parsed, before any node starts.
    with pytest.raises(ValueError, match=match):
        RunConfig.from_mapping({"strategy": name, "dp": "client", **extra})


@pytest.mark.parametrize(
    ("key", "value"),
    [("dp", "local"), ("dp-noise-multiplier", -1.0), ("dp-clipping-norm", 0.0), ("dp-delta", 1.0)],
)
def test_bad_dp_settings_are_refused(key, value):
    values = {"strategy": "fedavg", "dp": "server", key: value}
    with pytest.raises(ValueError, match=key):
        RunConfig.from_mapping(values)


# --- clipping, noise, client side --------------------------------------------------------


def test_server_side_clipping_bounds_every_update_and_weights_clients_equally(identity):
    strategy = ServerSideDP(FedAvg(min_train_nodes=4, min_available_nodes=4), 0.0, 1.0)
    start(strategy, 4)
    norms, examples = [3.0, 0.5, 10.0, 2.0], [1, 100, 5, 7]
    aggregated = dp_round(strategy, 1, norms, examples)
    expected = {}
    for key in GLOBAL:
        clipped = [
            GLOBAL[key] + (update(i, n)[key] - GLOBAL[key]) * min(1.0, 1.0 / n)
            for i, n in enumerate(norms)
        ]
        expected[key] = np.mean(clipped, axis=0)  # uniform, not example-weighted
    for key in GLOBAL:
        np.testing.assert_allclose(aggregated[key], expected[key], atol=1e-6)
    assert update_norm(aggregated, GLOBAL) <= 1.0 + 1e-6
    assert strategy.last_release["clipped"] == 3 and strategy.last_release["replies"] == 4


def test_noise_changes_the_aggregate_by_the_calibrated_amount_and_is_seeded(identity):
    def run(server_round: int, seed: int = 0, simulated: bool = True):
        strategy = ServerSideDP(FedAvg(min_train_nodes=4, min_available_nodes=4), 1.0, 1.0)
        start(strategy, 4, seed=seed, simulated=simulated)
        return dp_round(strategy, server_round, [0.5] * 4, [1] * 4), strategy

    clean_strategy = ServerSideDP(FedAvg(min_train_nodes=4, min_available_nodes=4), 0.0, 1.0)
    start(clean_strategy, 4)
    clean = dp_round(clean_strategy, 1, [0.5] * 4, [1] * 4)
    noisy, strategy = run(1)
    noise = np.concatenate([(noisy[k] - clean[k]).ravel() for k in GLOBAL])
    assert strategy.last_release["noise_std"] == pytest.approx(0.25)  # z C / m
    assert np.std(noise) == pytest.approx(0.25, rel=0.05) and abs(np.mean(noise)) < 0.02
    assert all(np.array_equal(noisy[k], run(1)[0][k]) for k in GLOBAL)  # same seed, round
    assert not np.array_equal(noisy["w"], run(2)[0]["w"])
    assert not np.array_equal(noisy["w"], run(1, seed=1)[0]["w"])
    assert not np.array_equal(noisy["w"], run(1, simulated=False)[0]["w"])  # OS entropy


def test_client_side_dp_asks_clients_to_clip_and_flowers_mod_clips_our_replies(identity):
    strategy = ClientSideDP(FedAvg(min_train_nodes=2, min_available_nodes=2), 0.0, 0.3)
    start(strategy, 2)
    messages = list(strategy.configure_train(1, record(GLOBAL), ConfigRecord(), NodesGrid([1, 2])))
    assert all(m.content["config"][KEY_CLIPPING_NORM] == 0.3 for m in messages)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    replies = [
        fixedclipping_mod(m, context, lambda m, c, i=i: reply(m, update(i, 5.0), 10))
        for i, m in enumerate(messages)
    ]
    assert not any(r.has_error() for r in replies)
    arrays = [numpy_of(r.content["arrays"]) for r in replies]
    tensors = {k: v for k, v in GLOBAL.items() if v.ndim}
    assert all(update_norm(a, tensors) < 0.3 for a in arrays)  # the mod clipped these...
    assert all(update_norm(a, GLOBAL) > 0.3 * (1 + 1e-3) for a in arrays)  # ...not the 0-d
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert update_norm(numpy_of(aggregated), GLOBAL) <= 0.3 + 1e-6
    assert strategy.last_release["not_clipped_by_client"] == 0  # Flower's 0-d miss is ours


def test_flowers_clipping_misses_0d_arrays_and_ours_does_not(identity):
    from flwr.supercore.differential_privacy import compute_clip_model_update

    sent = [np.zeros(3, dtype=np.float32), np.array(0.5, dtype=np.float32)]
    trained = [np.array([3.0, 0, 0], dtype=np.float32), np.array(4.5, dtype=np.float32)]
    compute_clip_model_update(trained, sent, 1.0)
    assert float(trained[1]) == 4.5  # Flower 1.42 leaves the 0-d update (4.0) unclipped
    strategy = ServerSideDP(FedAvg(min_train_nodes=2, min_available_nodes=2), 0.0, 1.0)
    start(strategy, 2)
    messages = list(strategy.configure_train(1, record(GLOBAL), ConfigRecord(), NodesGrid([1, 2])))
    moved = {k: v.copy() for k, v in GLOBAL.items()}
    moved["gate"] = np.array(40.5, dtype=np.float32)
    arrays, _ = strategy.aggregate_train(1, [reply(m, moved, 1) for m in messages])
    assert update_norm(numpy_of(arrays), GLOBAL) == pytest.approx(1.0, rel=1e-6)


def test_server_clips_updates_its_clients_did_not_clip_under_client_side_dp(identity):
    strategy = ClientSideDP(FedAvg(min_train_nodes=4, min_available_nodes=4), 0.0, 0.3)
    start(strategy, 4)
    aggregated = dp_round(strategy, 1, [0.3, 0.3, 0.9, 5.0], [1] * 4)
    assert update_norm(aggregated, GLOBAL) <= 0.3 + 1e-6
    assert strategy.last_release["not_clipped_by_client"] == 2
    assert strategy.last_release["clipped"] is None


# --- the ledger: results["privacy"] ------------------------------------------------------


def test_ledger_accounts_each_release_with_its_effective_noise_and_resumes(identity):
    strategy = ServerSideDP(FedAvg(fraction_train=0.5, min_available_nodes=2), 1.0, 1.0)
    ledger = PrivacyLedger(DPSettings("server", 1.0, 1.0, 0.0), profile_epsilon=2.0)
    ledger.start(strategy, 10, seed=0, simulated=False)
    assert strategy.num_sampled_clients == 5 and ledger.sample_rate == 0.5
    strategy.last_release = {"round": 1, "replies": 5, "noise_std": 0.2, "clipped": 1}
    ledger.record_round(strategy)
    strategy.last_release = {"round": 2, "replies": 3, "noise_std": 0.2, "clipped": 0}
    ledger.record_round(strategy)
    assert ledger.record_round(strategy) is None  # nothing new was released
    summary = ledger.summary()
    expected = rdp_epsilon([(1.0, 0.5), (0.6, 0.5)], 1e-5)[0]
    assert summary["epsilon"] == pytest.approx(expected)
    assert summary["epsilon_without_sampling"] > summary["epsilon"]
    assert summary["rounds"] == 2 and summary["delta"] == 1e-5
    assert [r["noise_multiplier_effective"] for r in summary["per_round"]] == [1.0, 0.6]
    # A deployment's profile queries draw fresh noise: each one spends epsilon again.
    assert summary["profile_ldp"] == {
        "mechanism": "laplace",
        "epsilon_per_release": 2.0,
        "queries": 1,
        "epsilon": 2.0,
    }
    resumed = PrivacyLedger(DPSettings("server", 1.0, 1.0, 0.0), profile_epsilon=2.0)
    resumed.start(strategy, 10, seed=0, simulated=False, previous=summary)
    assert resumed.summary()["epsilon"] == pytest.approx(expected)
    assert resumed.summary()["profile_ldp"]["epsilon"] == 4.0
    strategy.last_release = {"round": 3, "replies": 5, "noise_std": 0.2, "clipped": 0}
    resumed.record_round(strategy)
    assert resumed.summary()["epsilon"] > expected


def test_ledger_claims_no_sampling_amplification_under_exclusion():
    fedgeo = FedGeo(fraction_train=0.5, exclusion=ExclusionConfig(), aggregation="mean")
    fedgeo.set_profiles({n: {"distinct_places": float(n)} for n in range(1, 11)})
    strategy = ServerSideDP(fedgeo, 1.0, 1.0)
    ledger = start(strategy, 10)
    assert ledger.sample_size == 5 and ledger.sample_rate == 1.0
    assert "exclusion" in ledger.summary()["sampling"]


def test_without_dp_results_say_so():
    summary = PrivacyLedger.from_values(RunConfig.from_mapping({}).values)
    summary.start(FedAvg(), 4, seed=0, simulated=True)
    assert summary.summary() == {
        "mechanism": "none",
        "epsilon": None,
        "profile_ldp": {"mechanism": "none", "queries": 1},
    }


# --- end to end: ONE start of the simulation engine --------------------------------------


def tiny(out: Path, **overrides) -> dict:
    return {**TINY, "out-dir": str(out), "client-state-dir": str(out / "client-state"), **overrides}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    from experiments.simulate_cli import simulate

    root = tmp_path_factory.mktemp("privacy")
    server_dp = {
        "strategy": "fedgeo",
        "fedgeo-aggregation": "mean",
        "fraction-train": 0.5,
        "dp": "server",
        "dp-clipping-norm": CLIP,
        "profile-ldp-epsilon": 1.0,
    }
    plan = {
        "server": tiny(root / "server", **server_dp),
        "server-resumed": tiny(root / "server", **server_dp, **{"num-rounds": 2, "resume": True}),
        "client": tiny(
            root / "client", strategy="fedavg", dp="client", **{"dp-clipping-norm": CLIP}
        ),
    }
    results = simulate(list(plan.values()), NODES, 2, progress=False)
    return {
        name: {"results": r, "values": plan[name]} for name, r in zip(plan, results, strict=True)
    }


def test_dp_run_reports_the_privacy_spent_per_round_and_across_a_resume(runs):
    results = runs["server-resumed"]["results"]
    assert results["resumed_at"] == [2]
    privacy = results["privacy"]
    assert privacy["mechanism"] == "gaussian" and privacy["clipping"] == "server"
    assert privacy["accountant"] == "rdp" and privacy["delta"] == default_delta(NODES)
    assert privacy["population"] == NODES and privacy["sampled_per_round"] == NODES // 2
    assert [r["round"] for r in privacy["per_round"]] == [1, 2] and privacy["rounds"] == 2
    steps = [(r["noise_multiplier_effective"], r["sample_rate"]) for r in privacy["per_round"]]
    assert privacy["epsilon"] == pytest.approx(rdp_epsilon(steps, privacy["delta"])[0])
    assert privacy["epsilon"] > rdp_epsilon(steps[:1], privacy["delta"])[0] > 0
    for round_record in results["rounds"]:
        assert round_record["skipped"] is None
        release = round_record["privacy"]
        assert release["replies"] == round_record["replies"] > 0
        assert release["clipped"] == release["replies"]  # CLIP is below every update norm
        assert release["noise_std"] == pytest.approx(CLIP / (NODES // 2))
    # The profile was queried twice (start, resume) with the same seeded noise.
    assert privacy["profile_ldp"] == {
        "mechanism": "laplace",
        "epsilon_per_release": 1.0,
        "queries": 2,
        "epsilon": 1.0,
    }
    assert math.isfinite(results["test"]["mrr"])


def test_client_side_dp_run_clips_what_its_clients_did_not(runs):
    results = runs["client"]["results"]
    privacy = results["privacy"]
    assert privacy["clipping"] == "client" and privacy["rounds"] == 1
    assert privacy["sample_rate"] == 1.0 and privacy["sampled_per_round"] == NODES
    [round_record] = results["rounds"]
    release = round_record["privacy"]
    assert round_record["skipped"] is None and release["replies"] == NODES
    # Clients with Flower's fixedclipping_mod clip; any other update is clipped by the
    # server and counted (CLIP is below every update norm of the tiny model).
    assert 0 <= release["not_clipped_by_client"] <= NODES
    assert privacy["epsilon"] == pytest.approx(rdp_epsilon([(1.0, 1.0)], privacy["delta"])[0])


def test_ldp_exclusion_study_separates_extreme_users_only_without_much_noise(tmp_path):
    from experiments.ldp_exclusion import main, parse_args, study

    args = parse_args(["--users", "60", "--days", "30", "--epsilons", "inf,0.5", "--repeats", "5"])
    table, facts = study(args)
    assert facts["extreme_users"] == 12  # 20% of 60 visit 2-3 places
    exact, noisy = table.iloc[0], table.iloc[1]
    assert exact["extreme_excluded"] == 1.0 and exact["diverse_excluded"] == 0.0
    assert exact["spearman"] == pytest.approx(1.0)
    assert noisy["spearman"] < 0.9 and noisy["p_extreme"] > exact["p_extreme"]
    assert main(["--users", "30", "--epsilons", "inf", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "ldp_exclusion.csv").read_text().startswith("epsilon,")
