"""Server strategies: SCAFFOLD, FedDyn, FedGeo, LocalOnly, aggregators, registry, state."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pytest
from fakes import NodesGrid
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedYogi,
    Strategy,
)
from flwr.supercore.task_identity import TaskIdentity

from server.strategies import (
    STRATEGY_NAMES,
    ExclusionConfig,
    FedDyn,
    FedGeo,
    LocalOnly,
    Scaffold,
    build_strategy,
    drift_weighted_mean,
    geometric_median,
    restore_strategy_state,
    seed_round,
    strategy_state,
    weighted_mean,
)
from server.strategies.aggregation import Workspace
from server.strategies.contract import (
    CONTROL_DELTA,
    FEDDYN_ALPHA,
    LOCAL_ONLY,
    PROXIMAL_MU,
    SERVER_CONTROL,
    array_views,
)

# --- plumbing: a grid that only lists nodes, and client replies --------------------------


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages need the ServerApp's identity, which a real run sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def arrays_record(**arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def reply(
    instruction: Message,
    arrays: dict[str, np.ndarray] | None,
    num_examples: float,
    loss: float = 1.0,
    **extra: ArrayRecord,
) -> Message:
    records: dict = {"metrics": MetricRecord({"num-examples": num_examples, "train-loss": loss})}
    if arrays is not None:
        records["arrays"] = arrays_record(**arrays)
    records.update(extra)
    return Message(RecordDict(records), reply_to=instruction)


def numpy_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def by_node(messages: Iterable[Message]) -> dict[int, Message]:
    return {m.metadata.dst_node_id: m for m in messages}


# --- SCAFFOLD ----------------------------------------------------------------------------


def test_scaffold_hand_computed_round() -> None:
    strategy = Scaffold(fraction_train=0.5, min_train_nodes=2, min_available_nodes=4)
    grid = NodesGrid([1, 2, 3, 4])
    x = arrays_record(a=np.array([1.0]), b=np.array([2.0]))
    random.seed(0)
    messages = by_node(strategy.configure_train(1, x, ConfigRecord(), grid))
    assert len(messages) == 2
    for msg in messages.values():
        control = numpy_of(msg.content[SERVER_CONTROL])
        assert control == {"a": np.zeros(1), "b": np.zeros(1)}
    (n1, m1), (n2, m2) = sorted(messages.items())
    replies = [
        reply(m1, {"a": np.array([0.0]), "b": np.array([2.0])}, 1,
              **{CONTROL_DELTA: arrays_record(a=np.array([1.0]), b=np.array([0.0]))}),
        reply(m2, {"a": np.array([2.0]), "b": np.array([6.0])}, 3,
              **{CONTROL_DELTA: arrays_record(a=np.array([3.0]), b=np.array([2.0]))}),
    ]  # fmt: skip
    new, metrics = strategy.aggregate_train(1, replies)
    out = numpy_of(new)
    # x + 1 * uniform mean(y - x): [1, 4] (the example-weighted mean would be [1.5, 5]).
    np.testing.assert_allclose(out["a"], [1.0])
    np.testing.assert_allclose(out["b"], [4.0])
    # c <- 0 + (|S|/N) mean(dc) = 0.5 * [2, 1]
    np.testing.assert_allclose(strategy.control["a"], [1.0])
    np.testing.assert_allclose(strategy.control["b"], [0.5])
    assert metrics["train-loss"] == pytest.approx(1.0)
    # Next round carries the updated control variate; server_lr scales the step.
    strategy.server_lr = 0.5
    messages = list(strategy.configure_train(2, new, ConfigRecord(), grid))
    sent = numpy_of(messages[0].content[SERVER_CONTROL])
    np.testing.assert_allclose(sent["a"], [1.0])
    np.testing.assert_allclose(sent["b"], [0.5])
    replies = [
        reply(m, {"a": np.array([3.0]), "b": np.array([4.0])}, 1,
              **{CONTROL_DELTA: arrays_record(a=np.array([0.0]), b=np.array([0.0]))})
        for m in messages
    ]  # fmt: skip
    new2, _ = strategy.aggregate_train(2, replies)
    np.testing.assert_allclose(numpy_of(new2)["a"], [1.0 + 0.5 * 2.0])
    np.testing.assert_allclose(strategy.control["a"], [1.0])


def test_scaffold_rejects_reply_without_control_delta() -> None:
    strategy = Scaffold(min_available_nodes=2)
    grid = NodesGrid([1, 2])
    messages = list(strategy.configure_train(1, arrays_record(w=np.zeros(2)), ConfigRecord(), grid))
    replies = [reply(m, {"w": np.ones(2)}, 1) for m in messages]
    with pytest.raises(InconsistentMessageReplies, match=CONTROL_DELTA):
        strategy.aggregate_train(1, replies)


def test_scaffold_skips_error_replies_and_keeps_dtype() -> None:
    strategy = Scaffold(min_available_nodes=2)
    grid = NodesGrid([1, 2])
    x = arrays_record(w=np.zeros(2, dtype=np.float32))
    messages = list(strategy.configure_train(1, x, ConfigRecord(), grid))
    good = reply(
        messages[0],
        {"w": np.ones(2, dtype=np.float32)},
        1,
        **{CONTROL_DELTA: arrays_record(w=np.ones(2, dtype=np.float32))},
    )
    bad = Message(Error(code=0, reason="boom"), reply_to=messages[1])
    new, _ = strategy.aggregate_train(1, [good, bad])
    assert numpy_of(new)["w"].dtype == np.float32
    np.testing.assert_allclose(numpy_of(new)["w"], [1.0, 1.0])
    np.testing.assert_allclose(strategy.control["w"], [0.5, 0.5])  # |S|/N = 1/2


# --- FedDyn ------------------------------------------------------------------------------


def test_feddyn_hand_computed_rounds() -> None:
    strategy = FedDyn(fraction_train=0.5, min_available_nodes=4, alpha=0.5)
    grid = NodesGrid([1, 2, 3, 4])
    prev = arrays_record(w=np.array([1.0, 2.0]))
    config = ConfigRecord()
    messages = list(strategy.configure_train(1, prev, config, grid))
    assert messages[0].content["config"][FEDDYN_ALPHA] == 0.5
    replies = [
        reply(messages[0], {"w": np.array([3.0, 2.0])}, 10),
        reply(messages[1], {"w": np.array([1.0, 6.0])}, 1),
    ]
    new, _ = strategy.aggregate_train(1, replies)
    # h = -0.5 * ([2,0] + [0,4]) / 4; theta = mean - h / alpha
    np.testing.assert_allclose(strategy.h["w"], [-0.25, -0.5])
    np.testing.assert_allclose(numpy_of(new)["w"], [2.5, 5.0])
    # Round 2: h accumulates.
    messages = list(strategy.configure_train(2, new, ConfigRecord(), grid))
    replies = [reply(m, {"w": np.array([2.5, 5.0]) + 1.0}, 1) for m in messages]
    new2, _ = strategy.aggregate_train(2, replies)
    np.testing.assert_allclose(strategy.h["w"], [-0.25 - 0.25, -0.5 - 0.25])
    np.testing.assert_allclose(numpy_of(new2)["w"], [3.5 + 1.0, 6.0 + 1.5])


def test_feddyn_and_the_dynamic_correction_reject_replies_with_other_arrays() -> None:
    grid = NodesGrid([1, 2])
    for strategy in (FedDyn(alpha=0.5), FedGeo(dynamic_alpha=0.5)):
        sent = list(strategy.configure_train(1, arrays_record(w=np.ones(2)), ConfigRecord(), grid))
        replies = [reply(m, {"v": np.ones(2)}, 1) for m in sent]  # not the global "w"
        with pytest.raises(AggregationError, match="reply arrays differ"):
            strategy.aggregate_train(1, replies)


def test_feddyn_rejects_nonpositive_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        FedDyn(alpha=0.0)


# --- aggregators -------------------------------------------------------------------------


def _points(values: list[float], weights: list[float] | None = None) -> list:
    weights = weights or [1.0] * len(values)
    return [({"w": np.array([v])}, n) for v, n in zip(values, weights, strict=True)]


def test_geometric_median_of_1d_points_is_the_median() -> None:
    result = geometric_median(_points([0.0, 1.0, 10.0]), max_iter=2000, tol=1e-12)
    assert result.arrays["w"][0] == pytest.approx(1.0, abs=1e-3)
    weighted = geometric_median(_points([0.0, 1.0, 10.0], [1, 1, 5]), max_iter=2000, tol=1e-12)
    assert weighted.arrays["w"][0] == pytest.approx(10.0, abs=1e-3)


def test_geometric_median_minimizes_the_drift() -> None:
    rng = np.random.default_rng(0)
    clients = [
        ({"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)}, float(n))
        for n in rng.integers(1, 20, size=7)
    ]
    clients.append(({"a": np.full((3, 2), 25.0), "b": np.full(4, -25.0)}, 10.0))
    gm, mean = geometric_median(clients, max_iter=100), weighted_mean(clients)
    assert gm.drift < mean.drift
    assert gm.converged
    # Equilateral triangle: the median is the centroid.
    tri = [({"p": np.array(p)}, 1.0) for p in ([0.0, 0.0], [2.0, 0.0], [1.0, np.sqrt(3.0)])]
    np.testing.assert_allclose(
        geometric_median(tri, tol=1e-12, max_iter=500).arrays["p"], [1.0, np.sqrt(3) / 3]
    )


def test_drift_weighted_mean_shrinks_an_outlier() -> None:
    clients = _points([0.0, 0.1, -0.1, 0.05, 100.0], [1, 1, 1, 1, 1])
    plain = weighted_mean(clients)
    robust = drift_weighted_mean(clients)
    assert plain.arrays["w"][0] == pytest.approx(20.01)
    assert abs(robust.arrays["w"][0]) < 1.0
    # d_outlier ~ 4 tau (the mean itself is pulled toward it): weight ~ exp(-8) of the others.
    assert robust.weights[-1] < 1e-3 < robust.weights[0]
    assert robust.drift < plain.drift
    # Identical clients: tau = 0 falls back to the weighted mean.
    same = drift_weighted_mean(_points([3.0, 3.0], [1, 3]))
    assert same.arrays["w"][0] == pytest.approx(3.0)


def test_aggregators_keep_names_shapes_and_dtypes() -> None:
    clients = [
        ({"f": np.full((2, 2), v, np.float32), "i": np.array([v, v], np.int64)}, 1.0)
        for v in (1, 2, 4)
    ]
    for aggregate in (weighted_mean, drift_weighted_mean, geometric_median):
        out = aggregate(clients).arrays
        assert list(out) == ["f", "i"]
        assert out["f"].dtype == np.float32 and out["f"].shape == (2, 2)
        assert out["i"].dtype == np.int64


def test_aggregators_reject_mismatched_clients() -> None:
    with pytest.raises(ValueError, match="shape"):
        weighted_mean([({"w": np.zeros(2)}, 1), ({"w": np.zeros(3)}, 1)])
    with pytest.raises(ValueError, match="differ"):
        weighted_mean([({"w": np.zeros(2)}, 1), ({"v": np.zeros(2)}, 1)])
    with pytest.raises(ValueError, match="zero"):
        weighted_mean([({"w": np.zeros(2)}, 0)])


# --- FedGeo ------------------------------------------------------------------------------


def _random_replies(messages: list[Message], seed: int) -> list[Message]:
    rng = np.random.default_rng(seed)
    return [
        reply(
            m,
            {
                "emb": rng.normal(size=(5, 3)).astype(np.float32),
                "bias": rng.normal(size=5).astype(np.float32),
            },
            int(rng.integers(1, 50)),
            loss=float(rng.random()),
        )
        for m in messages
    ]


def test_fedgeo_with_everything_off_is_exactly_fedavg() -> None:
    grid = NodesGrid(range(10, 20))
    init = arrays_record(emb=np.zeros((5, 3), np.float32), bias=np.zeros(5, np.float32))
    fedavg = FedAvg(fraction_train=0.5)
    fedgeo = FedGeo(
        fraction_train=0.5,
        exclusion=ExclusionConfig(enabled=False),
        aggregation="mean",
        proximal_mu=0.0,
    )
    fedgeo.set_profiles({n: {"distinct_places": 1} for n in range(10, 20)})
    seed_round(3, 1)
    sent_avg = list(fedavg.configure_train(1, init, ConfigRecord(), grid))
    seed_round(3, 1)
    sent_geo = list(fedgeo.configure_train(1, init, ConfigRecord(), grid))
    assert [m.metadata.dst_node_id for m in sent_avg] == [m.metadata.dst_node_id for m in sent_geo]
    arrays_avg, metrics_avg = fedavg.aggregate_train(1, _random_replies(sent_avg, 7))
    arrays_geo, metrics_geo = fedgeo.aggregate_train(1, _random_replies(sent_geo, 7))
    for key in ("emb", "bias"):
        a, g = arrays_avg[key].numpy(), arrays_geo[key].numpy()
        assert a.dtype == g.dtype and a.tobytes() == g.tobytes()
    assert metrics_geo["train-loss"] == metrics_avg["train-loss"]
    assert metrics_geo["drift"] > 0 and metrics_geo["participants"] == 5
    assert sent_geo[0].content["config"][PROXIMAL_MU] == 0.0


def test_fedgeo_geometric_median_reduces_logged_drift() -> None:
    grid = NodesGrid(range(6))
    init = arrays_record(emb=np.zeros((5, 3), np.float32), bias=np.zeros(5, np.float32))
    drifts = {}
    for aggregation in ("mean", "drift-weighted", "geometric-median"):
        strategy = FedGeo(aggregation=aggregation, proximal_mu=0.1)
        random.seed(0)
        sent = list(strategy.configure_train(1, init, ConfigRecord(), grid))
        assert sent[0].content["config"][PROXIMAL_MU] == 0.1
        replies = _random_replies(sent, 1)
        replies[0].content["arrays"]["bias"] = Array(np.full(5, 40.0, np.float32))  # outlier
        _, metrics = strategy.aggregate_train(1, replies)
        drifts[aggregation] = metrics["drift"]
        assert strategy.drift_log[1]["drift"] == metrics["drift"]
    assert drifts["geometric-median"] < drifts["mean"]
    assert drifts["drift-weighted"] < drifts["mean"]


def _side_by_side(
    strategies: dict[str, Strategy],
    make_replies: Callable[[list[Message], int], list[Message]],
    on_sent: Callable[[str, Strategy, list[Message]], None] | None = None,
) -> Iterator[dict[str, ArrayRecord]]:
    """Rounds 1 to 3 of ``strategies`` on one grid of 10 nodes, each round seeded alike
    and answered by ``make_replies(sent, round)``; ``"plain median"`` starts every round
    from ``"median"``'s model. Yields each round's new models; ``on_sent`` sees every
    strategy's instructions before their replies are aggregated."""
    grid = NodesGrid(range(10, 20))
    init = arrays_record(emb=np.zeros((5, 3), np.float32), bias=np.zeros(5, np.float32))
    arrays = dict.fromkeys(strategies, init)
    for server_round in (1, 2, 3):
        new = {}
        for name, strategy in strategies.items():
            start = arrays["median"] if name == "plain median" else arrays[name]
            seed_round(5, server_round)
            sent = list(strategy.configure_train(server_round, start, ConfigRecord(), grid))
            if on_sent is not None:
                on_sent(name, strategy, sent)
            new[name], _ = strategy.aggregate_train(server_round, make_replies(sent, server_round))
        yield new
        arrays = new


def test_fedgeo_dynamic_correction_is_feddyn_around_its_aggregate() -> None:
    """With the mean, uniform weights and no exclusion, FedGeo's dynamic correction is
    FedDyn; with the geometric median it moves the median by the same -h / alpha."""
    off = ExclusionConfig(enabled=False)
    strategies = {
        "feddyn": FedDyn(fraction_train=0.5, alpha=0.1),
        "mean": FedGeo(fraction_train=0.5, exclusion=off, aggregation="mean",
                       weighting="uniform", dynamic_alpha=0.1),
        "median": FedGeo(fraction_train=0.5, exclusion=off, dynamic_alpha=0.1),
        "plain median": FedGeo(fraction_train=0.5, exclusion=off),
    }
    configs: dict[str, ConfigRecord] = {}

    def keep_config(name: str, strategy: Strategy, sent: list[Message]) -> None:
        configs[name] = sent[0].content["config"]

    for new in _side_by_side(strategies, _random_replies, keep_config):
        config = configs["plain median"]
        assert PROXIMAL_MU in config and FEDDYN_ALPHA not in config  # "plain median"
        h = strategies["median"].h
        for key in ("emb", "bias"):
            np.testing.assert_allclose(new["mean"][key].numpy(), new["feddyn"][key].numpy(),
                                       atol=1e-6)
            np.testing.assert_allclose(strategies["mean"].h[key], strategies["feddyn"].h[key],
                                       atol=1e-7)
            np.testing.assert_allclose(new["median"][key].numpy(),
                                       new["plain median"][key].numpy() - h[key] / 0.1, atol=1e-5)
    seed_round(5, 4)
    grid = NodesGrid(range(10, 20))
    sent = list(strategies["median"].configure_train(4, new["median"], ConfigRecord(), grid))
    config = sent[0].content["config"]
    assert config[FEDDYN_ALPHA] == 0.1 and config[PROXIMAL_MU] == 0.0
    assert np.abs(h["emb"]).max() > 0


def _replies_with_control(messages: list[Message], seed: int) -> list[Message]:
    rng = np.random.default_rng(seed)
    out = []
    for m in messages:
        delta = arrays_record(emb=rng.normal(size=(5, 3)).astype(np.float32),
                              bias=rng.normal(size=5).astype(np.float32))
        arrays = {"emb": rng.normal(size=(5, 3)).astype(np.float32),
                  "bias": rng.normal(size=5).astype(np.float32)}
        extra = {CONTROL_DELTA: delta} if SERVER_CONTROL in m.content else {}
        out.append(reply(m, arrays, int(rng.integers(1, 50)), **extra))
    return out


def test_fedgeo_control_variates_are_scaffold_around_its_aggregate() -> None:
    """With the mean, uniform weights and no exclusion, FedGeo's control variates are
    SCAFFOLD; with the geometric median the model is the plain median of the same
    replies and ``c`` takes SCAFFOLD's step."""
    off = ExclusionConfig(enabled=False)
    strategies = {
        "scaffold": Scaffold(fraction_train=0.5),
        "mean": FedGeo(fraction_train=0.5, exclusion=off, aggregation="mean",
                       weighting="uniform", control_variates=True),
        "median": FedGeo(fraction_train=0.5, exclusion=off, control_variates=True),
        "plain median": FedGeo(fraction_train=0.5, exclusion=off),
    }

    def check_sent(name: str, strategy: Strategy, sent: list[Message]) -> None:
        if name == "median":
            assert sent[0].content["config"][PROXIMAL_MU] == 0.0
            sent_control = numpy_of(sent[0].content[SERVER_CONTROL])
            for key, value in strategy.control.items():
                np.testing.assert_allclose(sent_control[key], value, atol=1e-6)
        if name == "plain median":
            assert SERVER_CONTROL not in sent[0].content

    for new in _side_by_side(strategies, _replies_with_control, check_sent):
        for key in ("emb", "bias"):
            np.testing.assert_allclose(new["mean"][key].numpy(), new["scaffold"][key].numpy(),
                                       atol=1e-6)
            for name in ("mean", "median"):
                np.testing.assert_allclose(strategies[name].control[key],
                                           strategies["scaffold"].control[key], atol=1e-7)
            np.testing.assert_allclose(new["median"][key].numpy(),
                                       new["plain median"][key].numpy(), atol=1e-6)
    assert np.abs(strategies["median"].control["emb"]).max() > 0


def test_fedgeo_control_variates_need_every_reply_to_carry_its_control_change() -> None:
    grid = NodesGrid([1, 2])
    strategy = FedGeo(control_variates=True, exclusion=ExclusionConfig(enabled=False))
    sent = list(strategy.configure_train(1, arrays_record(w=np.zeros(2)), ConfigRecord(), grid))
    with pytest.raises(InconsistentMessageReplies, match=CONTROL_DELTA):
        strategy.aggregate_train(1, [reply(m, {"w": np.ones(2)}, 1) for m in sent])


def test_fedgeo_takes_one_drift_correction_at_a_time() -> None:
    with pytest.raises(ValueError, match="choose one"):
        FedGeo(control_variates=True, dynamic_alpha=0.01)
    strategy = build_strategy("fedgeo", {"fedgeo-control-variates": "true"}, seed=0)
    assert isinstance(strategy, FedGeo) and strategy.control_variates


def test_fedgeo_rejects_a_negative_dynamic_alpha() -> None:
    with pytest.raises(ValueError, match="dynamic_alpha"):
        FedGeo(dynamic_alpha=-1.0)


def test_fedgeo_server_lr_scales_the_update() -> None:
    grid = NodesGrid([1, 2])
    strategy = FedGeo(server_lr=0.5)
    sent = list(strategy.configure_train(1, arrays_record(w=np.ones(2)), ConfigRecord(), grid))
    new, _ = strategy.aggregate_train(1, [reply(m, {"w": np.array([3.0, 5.0])}, 1) for m in sent])
    np.testing.assert_allclose(numpy_of(new)["w"], [2.0, 3.0])


def test_fedgeo_exclusion_samples_extreme_users_less_and_logs_participation() -> None:
    nodes = list(range(1, 41))
    grid = NodesGrid(nodes)
    # Odd nodes visit 1 place (p ~ 0.05), even nodes 30 places (p ~ 1).
    profiles = {n: {"distinct_places": 1 if n % 2 else 30} for n in nodes}
    init = arrays_record(w=np.zeros(1))
    strategy = FedGeo(fraction_train=1.0, exclusion=ExclusionConfig(), seed=11)
    strategy.set_profiles(profiles)
    chosen: list[int] = []
    for r in range(1, 31):
        chosen += [
            m.metadata.dst_node_id for m in strategy.configure_train(r, init, ConfigRecord(), grid)
        ]
    extreme = sum(1 for n in chosen if n % 2)
    regular = len(chosen) - extreme
    assert regular >= 0.95 * 20 * 30
    assert 0 < extreme < 0.12 * 20 * 30
    log = strategy.participation[3]
    assert log["sampling"] == "exclusion" and log["available"] == 40
    assert all(
        p == strategy.probabilities[n]
        for n, p in zip(log["node_ids"], log["probabilities"], strict=True)
    )
    # Same seed, same round -> same participants (reproducible and resumable).
    again = FedGeo(fraction_train=1.0, exclusion=ExclusionConfig(), seed=11)
    again.set_profiles(profiles)
    ids = [m.metadata.dst_node_id for m in again.configure_train(3, init, ConfigRecord(), grid)]
    assert ids == log["node_ids"]


def test_fedgeo_exclusion_ramp_lets_extreme_users_back_in() -> None:
    """With a ramp, one-place users are rare in round 1, all in once the ramp is over, and
    each round's log records the ramped probability."""
    nodes = list(range(1, 41))
    grid = NodesGrid(nodes)
    profiles = {n: {"distinct_places": 1 if n % 2 else 30} for n in nodes}
    init = arrays_record(w=np.zeros(1))
    strategy = FedGeo(fraction_train=1.0, exclusion=ExclusionConfig(ramp_rounds=10), seed=11)
    strategy.set_profiles(profiles)

    def extreme_in(server_round: int) -> int:
        sent = strategy.configure_train(server_round, init, ConfigRecord(), grid)
        return sum(1 for m in sent if m.metadata.dst_node_id % 2)

    assert extreme_in(1) < 6  # p ~ 0.05 for each of the 20 one-place users
    assert extreme_in(11) == 20  # ramp over: everyone has p = 1
    assert strategy.participation[11]["probabilities"] == [1.0] * 40
    extreme_in(6)  # half way through the ramp
    half_way = strategy.probabilities[1] + (1 - strategy.probabilities[1]) * 0.5
    log = strategy.participation[6]
    odd = [p for n, p in zip(log["node_ids"], log["probabilities"], strict=True) if n % 2]
    assert odd and odd == pytest.approx([half_way] * len(odd))


def test_fedgeo_without_profiles_falls_back_to_uniform_sampling() -> None:
    grid = NodesGrid(range(8))
    strategy = FedGeo(fraction_train=0.5, exclusion=ExclusionConfig())
    random.seed(1)
    sent = list(strategy.configure_train(1, arrays_record(w=np.zeros(1)), ConfigRecord(), grid))
    assert len(sent) == 4
    assert strategy.participation[1]["sampling"] == "uniform"
    assert strategy.participation[1]["probabilities"] == [1.0] * 4


# --- LocalOnly ---------------------------------------------------------------------------


def test_local_only_keeps_global_arrays_and_flags_clients() -> None:
    grid = NodesGrid([1, 2])
    strategy = LocalOnly()
    init = arrays_record(w=np.arange(3.0))
    sent = list(strategy.configure_train(1, init, ConfigRecord(), grid))
    assert all(m.content["config"][LOCAL_ONLY] == 1 for m in sent)
    evaluate = list(strategy.configure_evaluate(1, init, ConfigRecord(), grid))
    assert all(m.content["config"][LOCAL_ONLY] == 1 for m in evaluate)
    replies = [reply(sent[0], None, 1, loss=1.0), reply(sent[1], None, 3, loss=3.0)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(numpy_of(arrays)["w"], np.arange(3.0))
    assert metrics["train-loss"] == pytest.approx(2.5)


# --- registry ----------------------------------------------------------------------------


def test_registry_builds_every_name() -> None:
    expected = {
        "fedgeo": FedGeo,
        "fedavg": FedAvg,
        "fedprox": FedProx,
        "fedavgm": FedAvgM,
        "fedadam": FedAdam,
        "fedyogi": FedYogi,
        "scaffold": Scaffold,
        "feddyn": FedDyn,
        "local": LocalOnly,
    }
    assert set(STRATEGY_NAMES) == set(expected)
    for name in STRATEGY_NAMES:
        strategy = build_strategy(name, {"fraction-train": 0.25}, seed=0)
        assert type(strategy) is expected[name]
        assert strategy.fraction_train == 0.25


def test_registry_maps_parameters() -> None:
    params = {
        "fraction-evaluate": "0.5",
        "min-train-nodes": 3,
        "proximal-mu": 0.3,
        "server-lr": 0.7,
        "server-momentum": 0.5,
        "eta": 0.02,
        "beta-1": 0.8,
        "alpha": 0.2,
        "fedgeo-exclusion": "false",
        "fedgeo-aggregation": "drift-weighted",
        "fedgeo-floor": 0.1,
        "fedgeo-midpoint": 6,
        "num-server-rounds": 10,  # someone else's key: ignored
    }
    geo = build_strategy("fedgeo", params, seed=5)
    assert geo.exclusion == ExclusionConfig(enabled=False, floor=0.1, midpoint=6.0)
    assert (geo.aggregation, geo.proximal_mu, geo.server_lr, geo.seed) == (
        "drift-weighted", 0.3, 0.7, 5,
    )  # fmt: skip
    assert geo.fraction_evaluate == 0.5 and geo.min_train_nodes == 3
    assert build_strategy("fedprox", params, seed=0).proximal_mu == 0.3
    avgm = build_strategy("fedavgm", params, seed=0)
    assert (avgm.server_learning_rate, avgm.server_momentum) == (0.7, 0.5)
    adam = build_strategy("fedadam", params, seed=0)
    assert (adam.eta, adam.beta_1) == (0.02, 0.8)
    assert build_strategy("scaffold", params, seed=0).server_lr == 0.7
    assert build_strategy("feddyn", params, seed=0).alpha == 0.2
    defaults = build_strategy("fedgeo", {}, seed=0)
    assert defaults.exclusion.enabled and defaults.aggregation == "geometric-median"


def test_registry_errors_are_explicit() -> None:
    with pytest.raises(ValueError, match="fedgeo, fedavg, fedprox"):
        build_strategy("fedsomething", {}, seed=0)
    with pytest.raises(ValueError, match="min-train-nodes"):
        build_strategy("fedavg", {"min-train-nodes": 2.5}, seed=0)
    with pytest.raises(ValueError, match="fedgeo-exclusion"):
        build_strategy("fedgeo", {"fedgeo-exclusion": "maybe"}, seed=0)
    with pytest.raises(ValueError, match="aggregation"):
        build_strategy("fedgeo", {"fedgeo-aggregation": "median"}, seed=0)
    with pytest.raises(ValueError, match="not a flwr Strategy"):
        build_strategy("numpy:ndarray", {}, seed=0)
    with pytest.raises(ValueError, match="cannot import"):
        build_strategy("no_such_module_xyz:Thing", {}, seed=0)


class NeedsThreshold(FedAvg):
    """An import-path strategy with a required argument (and a seed)."""

    def __init__(self, threshold: float, *, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold, self.seed = threshold, seed


def test_registry_import_paths() -> None:
    median = build_strategy("flwr.serverapp.strategy:FedMedian", {"min-train-nodes": 4}, seed=0)
    assert type(median) is FedMedian and median.min_train_nodes == 4
    trimmed = build_strategy(
        "experiments.custom_strategy:TrimmedMean",
        {"trim-fraction": "0.2", "fraction-train": 0.5},
        seed=0,
    )
    assert trimmed.trim_fraction == 0.2 and trimmed.fraction_train == 0.5
    path = f"{__name__}:NeedsThreshold"
    with pytest.raises(ValueError, match="threshold"):
        build_strategy(path, {}, seed=0)
    custom = build_strategy(path, {"threshold": 0.5, "min-available-nodes": 3}, seed=9)
    assert (custom.threshold, custom.seed, custom.min_available_nodes) == (0.5, 9, 3)


def test_custom_trimmed_mean_strategy_aggregates() -> None:
    strategy = build_strategy(
        "experiments.custom_strategy:TrimmedMean", {"trim-fraction": 0.25}, seed=0
    )
    grid = NodesGrid([1, 2, 3, 4])
    sent = list(strategy.configure_train(1, arrays_record(w=np.zeros(1)), ConfigRecord(), grid))
    values = [0.0, 1.0, 2.0, 100.0]
    new, _ = strategy.aggregate_train(
        1, [reply(m, {"w": np.array([v])}, 1) for m, v in zip(sent, values, strict=True)]
    )
    np.testing.assert_allclose(numpy_of(new)["w"], [1.5])


# --- checkpoint state --------------------------------------------------------------------


def _client_replies(messages: list[Message], server_round: int) -> list[Message]:
    """Deterministic fake clients: move toward a node-specific target (SCAFFOLD clients
    also step against the server control variate)."""
    out = []
    for m in messages:
        node = m.metadata.dst_node_id
        x = numpy_of(m.content["arrays"])
        y = {k: (0.5 * v + node + server_round * 0.1).astype(v.dtype) for k, v in x.items()}
        extra = {}
        if SERVER_CONTROL in m.content:
            c = numpy_of(m.content[SERVER_CONTROL])
            y = {k: (v - c[k]).astype(v.dtype) for k, v in y.items()}
            extra[CONTROL_DELTA] = arrays_record(
                **{k: np.full_like(v, 0.01 * node) for k, v in x.items()}
            )
        out.append(reply(m, y, node, loss=float(node), **extra))
    return out


def _run_round(strategy: Strategy, arrays: ArrayRecord, server_round: int, grid: Grid):
    seed_round(4, server_round)
    sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    new, _ = strategy.aggregate_train(server_round, _client_replies(sent, server_round))
    return new, [m.metadata.dst_node_id for m in sent]


STATEFUL: dict[str, Callable[[], Strategy]] = {
    "fedavgm": lambda: FedAvgM(fraction_train=0.5, server_momentum=0.9, server_learning_rate=0.5),
    "fedadam": lambda: FedAdam(fraction_train=0.5),
    "fedyogi": lambda: FedYogi(fraction_train=0.5),
    "scaffold": lambda: Scaffold(fraction_train=0.5, server_lr=0.8),
    "feddyn": lambda: FedDyn(fraction_train=0.5, alpha=0.1),
    "fedgeo": lambda: FedGeo(
        fraction_train=0.5, exclusion=ExclusionConfig(), aggregation="geometric-median", seed=2
    ),
    "fedgeo-dynamic": lambda: FedGeo(
        fraction_train=0.5, exclusion=ExclusionConfig(), aggregation="geometric-median", seed=2,
        dynamic_alpha=0.1,
    ),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_restored_strategy_continues_identically(name: str) -> None:
    grid = NodesGrid(range(1, 7))
    profiles = {n: {"distinct_places": n} for n in range(1, 7)}
    original = STATEFUL[name]()
    if isinstance(original, FedGeo):
        original.set_profiles(profiles)
    arrays = arrays_record(w=np.linspace(0, 1, 4).astype(np.float32), b=np.ones(2, np.float32))
    for r in (1, 2):
        arrays, _ = _run_round(original, arrays, r, grid)
    checkpoint = strategy_state(original)

    resumed = STATEFUL[name]()  # fresh, as after a restart (no profiles set)
    restore_strategy_state(resumed, checkpoint)
    a1, nodes1 = _run_round(original, arrays, 3, grid)
    a2, nodes2 = _run_round(resumed, arrays, 3, grid)
    assert nodes1 == nodes2
    for key in ("w", "b"):
        assert a1[key].numpy().tobytes() == a2[key].numpy().tobytes()

    # A strategy that was not restored diverges (the state matters).
    if name in ("fedavgm", "fedadam", "scaffold", "feddyn", "fedgeo-dynamic"):
        fresh = STATEFUL[name]()
        a3, _ = _run_round(fresh, arrays, 3, grid)
        assert a3["w"].numpy().tobytes() != a1["w"].numpy().tobytes()


def test_restore_rejects_another_strategy_class() -> None:
    data = strategy_state(FedDyn())
    with pytest.raises(ValueError, match="FedDyn"):
        restore_strategy_state(Scaffold(), data)


def test_seed_round_makes_flower_sampling_reproducible() -> None:
    grid = NodesGrid(range(50))
    picks = []
    for r in (1, 1, 2):
        seed_round(7, r)
        sent = FedAvg(fraction_train=0.2).configure_train(
            r, arrays_record(w=np.zeros(1)), ConfigRecord(), grid
        )
        picks.append(sorted(m.metadata.dst_node_id for m in sent))
    assert picks[0] == picks[1] != picks[2]


# --- Flower's round loop -----------------------------------------------------------------


class InProcessGrid(NodesGrid):
    """A grid whose nodes answer in-process with the fake clients above."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        super().__init__(node_ids)
        self.round = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if not messages:
            return []
        if messages[0].metadata.message_type == "train":
            self.round += 1
            if LOCAL_ONLY in messages[0].content["config"]:
                return [reply(m, None, 2, loss=0.5) for m in messages]
            return _client_replies(messages, self.round)
        return [
            Message(
                RecordDict({"metrics": MetricRecord({"num-examples": 1, "acc": 0.5})}), reply_to=m
            )
            for m in messages
        ]


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_named_strategy_runs_in_flowers_round_loop(name: str) -> None:
    strategy = build_strategy(name, {"fraction-train": 0.5}, seed=0)
    if isinstance(strategy, FedGeo):
        strategy.set_profiles({n: {"distinct_places": 3 * n} for n in range(1, 7)})
    init = arrays_record(w=np.linspace(0, 1, 4).astype(np.float32), b=np.ones(2, np.float32))
    random.seed(0)
    result = strategy.start(InProcessGrid(range(1, 7)), init, num_rounds=3)
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    assert result.evaluate_metrics_clientapp[3]["acc"] == pytest.approx(0.5)
    final = numpy_of(result.arrays)
    assert np.all(np.isfinite(final["w"]))
    # Flower's FedAdam upcasts to float64 (clients cast back when loading).
    assert final["w"].dtype == (np.float64 if name == "fedadam" else np.float32)
    changed = not np.array_equal(final["w"], numpy_of(init)["w"])
    assert changed == (name != "local")


def test_geometric_median_of_float32_models_matches_float64() -> None:
    # Float32 client models are aggregated in float32 (half the memory traffic); the
    # result must agree with the float64 computation to float32 precision.
    rng = np.random.default_rng(3)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    clients32 = [
        ({"w": base + rng.normal(scale=s, size=base.shape).astype(np.float32)}, float(n))
        for s, n in zip(rng.uniform(0.01, 2.0, size=9), rng.integers(1, 50, size=9), strict=True)
    ]
    clients64 = [({"w": a["w"].astype(np.float64)}, n) for a, n in clients32]
    r32, r64 = geometric_median(clients32), geometric_median(clients64)
    assert r32.arrays["w"].dtype == np.float32
    np.testing.assert_allclose(r32.arrays["w"], r64.arrays["w"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r32.distances, r64.distances, rtol=1e-5)
    assert r32.iterations == r64.iterations


def test_geometric_median_in_a_reused_workspace_is_bit_for_bit_the_same() -> None:
    # FedGeo builds the K x P matrix in one buffer kept across rounds; rounds with fewer
    # replies use a prefix of it. Results must not depend on it, nor alias it.
    rng = np.random.default_rng(5)
    workspace = Workspace()

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    def clients(k: int) -> list:
        return [
            ({"a": normal(20, 3), "b": normal(4)}, float(n)) for n in rng.integers(1, 30, size=k)
        ]

    first, second = clients(7), clients(4)
    r1 = geometric_median(first, workspace=workspace)
    kept = {k: v.copy() for k, v in r1.arrays.items()}
    r2 = geometric_median(second, workspace=workspace)
    for result, batch in ((r1, first), (r2, second)):
        fresh = geometric_median(batch)
        for key in fresh.arrays:
            np.testing.assert_array_equal(result.arrays[key], fresh.arrays[key])
        np.testing.assert_array_equal(result.distances, fresh.distances)
    for key in kept:  # the second round did not overwrite the first round's result
        np.testing.assert_array_equal(r1.arrays[key], kept[key])
    # Scratch space, not state: a checkpoint stores it empty.
    assert len(pickle.dumps(workspace)) < 200
    assert pickle.loads(pickle.dumps(workspace))._buffer is None


def test_array_views_read_the_records_bytes_without_copying() -> None:
    arrays = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "i64": np.arange(5, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    }
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    views = array_views(record)
    for key, value in arrays.items():
        np.testing.assert_array_equal(views[key], value)
        assert views[key].dtype == value.dtype and views[key].shape == value.shape
    assert not views["f32"].flags.writeable  # a view of the message's bytes
    assert views["fortran"].flags.writeable  # not C-ordered: loaded (copied) by Flower
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        array_views(ArrayRecord({"x": Array("float32", (1,), "torch.Tensor", b"1234")}))


def test_fedgeo_uniform_weighting_counts_every_client_once() -> None:
    grid = NodesGrid([1, 2])
    sent = list(FedGeo().configure_train(1, arrays_record(w=np.zeros(2)), ConfigRecord(), grid))
    replies = [
        reply(sent[0], {"w": np.array([0.0, 0.0])}, 1),
        reply(sent[1], {"w": np.array([4.0, 8.0])}, 3),
    ]
    by_examples, _ = FedGeo(aggregation="mean").aggregate_train(1, replies)
    np.testing.assert_allclose(numpy_of(by_examples)["w"], [3.0, 6.0])
    uniform = FedGeo(weighting="uniform", aggregation="mean")
    by_user, metrics = uniform.aggregate_train(1, replies)
    np.testing.assert_allclose(numpy_of(by_user)["w"], [2.0, 4.0])
    assert metrics["drift"] == pytest.approx(np.hypot(2.0, 4.0))
    median = FedGeo(weighting="uniform", aggregation="geometric-median")
    # Two points, equal weights: every point of the segment is a median; Weiszfeld from
    # the (uniform) mean stays there.
    np.testing.assert_allclose(numpy_of(median.aggregate_train(1, replies)[0])["w"], [2.0, 4.0])
    with pytest.raises(ValueError, match="weighting"):
        FedGeo(weighting="by-size")
