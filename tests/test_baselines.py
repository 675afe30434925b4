"""Reference predictors on a hand-built data set, leakage checks, and the NYC figures."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest

from fedgeo.baselines import (
    GlobalPopularity,
    Markov,
    MostFrequent,
    UserHistory,
    evaluate_predictor,
    interpolation_grid,
    make_predictor,
)
from fedgeo.data.dataset import Dataset, Places, UserData
from fedgeo.metrics import ranks_from_scores

NYC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "foursquare-nyc"

# ---------------------------------------------------------------- tiny hand-built data set


def make_user(user_id, trajectories: list[tuple[str, list[int]]]) -> UserData:
    """A user from consecutive trajectories labelled train/validation/test: every check-in
    of a training trajectory but the first is a training sample; a validation or test
    trajectory gives one sample, its last check-in."""
    places, traj_start = [], []
    splits = {"train": [], "validation": [], "test": []}
    for label, traj in trajectories:
        start = len(places)
        places += traj
        traj_start += [start] * len(traj)
        end = len(places)
        splits[label] += list(range(start + 1, end)) if label == "train" else [end - 1]
    n = len(places)
    return UserData(
        user_id=user_id,
        places=np.array(places, dtype=np.int64),
        times=np.arange(n, dtype=np.int64) * 600,
        local_offsets=np.zeros(n, dtype=np.int32),
        traj_start=np.array(traj_start, dtype=np.int64),
        **{k: np.array(v, dtype=np.int64) for k, v in splits.items()},
    )


def tiny() -> Dataset:
    # Places 0..4, input ids 10..50.
    a = make_user(
        "a",
        [
            ("train", [0, 1, 2]),  # positions 0-2, samples 1, 2
            ("train", [0, 1]),  # positions 3-4, sample 4
            ("validation", [0, 2]),  # positions 5-6, sample 6
            ("test", [1, 0, 1]),  # positions 7-9, sample 9
        ],
    )
    b = make_user("b", [("train", [3, 3, 1]), ("test", [3, 4])])  # samples 1, 2 | 4
    places = Places(
        ids=np.array([10, 20, 30, 40, 50]),
        latitude=np.zeros(5),
        longitude=np.zeros(5),
    )
    return Dataset(places=places, users=[a, b], name="tiny")


# Training targets: a -> 1, 2, 1; b -> 3, 1.  Popularity counts [0, 3, 1, 1, 0].
POP = np.array([0, 3, 1, 1, 0]) / 5
# Training transitions: 0->1 (twice), 1->2, 3->3, 3->1.


def test_global_popularity_counts_training_targets_only():
    ds = tiny()
    pred = GlobalPopularity().fit(ds)
    np.testing.assert_array_equal(pred.pop_counts_, [0, 3, 1, 1, 0])
    scores = pred.score_user(ds.users[0], np.array([6, 9]))
    np.testing.assert_array_equal(scores, [[0, 3, 1, 1, 0]] * 2)
    metrics, user_ids, targets, ranks = evaluate_predictor(pred, ds, "test")
    # a@9 target 1 is the most popular; b@4 target 4 ties at 0 with place 0 -> rank 5.
    assert user_ids == ["a", "b"]
    np.testing.assert_array_equal(targets, [20, 50])  # input ids, not dense indices
    np.testing.assert_array_equal(ranks, [1, 5])
    assert metrics["acc@1"] == 0.5 and metrics["samples"] == 2


def test_most_frequent_counts_the_whole_past_with_popularity_back_off():
    ds = tiny()
    pred = MostFrequent().fit(ds)
    # a@9: places[:9] = 0 1 2 0 1 0 2 1 0 -> visits [4, 3, 2, 0, 0].
    scores = pred.score_user(ds.users[0], np.array([9]))
    np.testing.assert_allclose(scores[0], np.array([4, 3, 2, 0, 0]) + 0.5 * POP)
    assert ranks_from_scores(scores, [1])[0] == 2
    # b@4: places[:4] = 3 3 1 3; never-visited target 4 ties with place 0 -> rank 5.
    _, _, _, ranks = evaluate_predictor(pred, ds, "test")
    np.testing.assert_array_equal(ranks, [2, 5])


def test_most_frequent_train_history_ignores_validation_and_test_trajectories():
    ds = tiny()
    pred = MostFrequent(history="train").fit(ds)
    # a@9, training trajectories only: 0 1 2 0 1 -> visits [2, 2, 1, 0, 0].
    scores = pred.score_user(ds.users[0], np.array([9]))
    np.testing.assert_allclose(scores[0], np.array([2, 2, 1, 0, 0]) + 0.5 * POP)
    assert ranks_from_scores(scores, [1])[0] == 1
    # Places 0 and 1 tie on visits: popularity (1 is the most popular) breaks the tie.
    # A training sample only sees the training check-ins before it.
    np.testing.assert_allclose(
        pred.score_user(ds.users[0], np.array([2]))[0], np.array([1, 1, 0, 0, 0]) + 0.5 * POP
    )


def test_global_markov_ranks_by_training_transitions_then_popularity():
    ds = tiny()
    pred = Markov("global").fit(ds)
    assert pred.trans_counts_[0, 1] == 2 and pred.trans_counts_[1, 2] == 1
    assert pred.trans_counts_.sum() == 5  # one per training sample
    # a@6: last place 0; target 2 has no transition from 0: scores [0, 2.3, .1, .1, 0].
    scores = pred.score_user(ds.users[0], np.array([6]))
    np.testing.assert_allclose(scores[0], np.array([0, 2, 0, 0, 0]) + 0.5 * POP)
    assert ranks_from_scores(scores, [2])[0] == 3  # tied with place 3, place 1 above


def test_personal_transitions_stay_inside_trajectories():
    user = tiny().users[0]
    hist = UserHistory(user)
    # At p=9 (last place 0) the pairs 0->1 (q=1), 0->1 (q=4), 0->2 (q=6) are in the past.
    np.testing.assert_array_equal(hist.transition_counts(np.array([9]))[0], [0, 2, 1])
    # At p=7 (last place 2): the only 2->x pair before it, 2->0 at q=3, crosses from
    # trajectory 1 into trajectory 2 and does not count.
    np.testing.assert_array_equal(hist.transition_counts(np.array([7]))[0], [0, 0, 0])
    np.testing.assert_array_equal(hist.freq_counts(np.array([3, 9])), [[1, 1, 1], [4, 3, 2]])


def test_personal_markov_is_transitions_then_frequency_then_popularity():
    ds = tiny()
    pred = Markov("personal").fit(ds)
    scores = pred.score_user(ds.users[0], np.array([9]))[0]
    freq = np.array([4, 3, 2, 0, 0])
    expected = np.array([0, 2, 1, 0, 0]) + (freq + 0.5 * POP) / 10  # |H| = 9
    np.testing.assert_allclose(scores, expected)
    assert list(np.argsort(-scores)) == [1, 2, 0, 3, 4]


def test_interpolated_scores_with_given_weights():
    ds = tiny()
    pred = Markov(weights=(0.25, 0.25, 0.25, 0.25)).fit(ds)
    assert pred.weights_ == (0.25, 0.25, 0.25, 0.25) and pred.search_ == []
    scores = pred.score_user(ds.users[0], np.array([9]))[0]
    p_u = np.array([0, 2 / 3, 1 / 3, 0, 0])
    p_g = np.array([0, 1, 0, 0, 0])  # P_g(. | 0)
    p_f = np.array([4, 3, 2, 0, 0]) / 9
    np.testing.assert_allclose(scores, 0.25 * (p_u + p_g + p_f + POP))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="variant"):
        Markov("second-order")
    with pytest.raises(ValueError, match="history"):
        MostFrequent(history="future")
    with pytest.raises(ValueError, match="weights"):
        Markov(weights=(1, 0, 0))
    with pytest.raises(ValueError, match="method"):
        make_predictor("lstm")
    with pytest.raises(RuntimeError, match="not fitted"):
        MostFrequent().score_user(tiny().users[0], np.array([1]))
    with pytest.raises(ValueError, match="positions"):
        GlobalPopularity().fit(tiny()).score_user(tiny().users[0], np.array([0]))


# ------------------------------------------------------------------ leakage and selection


def synthetic(seed: int = 0) -> Dataset:
    from fedgeo.data.loading import load_dataset
    from fedgeo.data.synthetic import SyntheticConfig

    ds, _ = load_dataset(synthetic=SyntheticConfig(seed=seed, num_users=30, num_places=80, days=25))
    return ds


PREDICTORS = [
    GlobalPopularity,
    MostFrequent,
    lambda: MostFrequent(history="train"),
    lambda: Markov("global"),
    lambda: Markov("personal"),
    lambda: Markov("personal", history="train"),
    lambda: Markov(grid=interpolation_grid(0.5)),
    lambda: Markov(grid=interpolation_grid(0.5), history="train"),
]


@pytest.mark.parametrize("factory", PREDICTORS)
def test_scores_at_p_ignore_the_future(factory):
    ds = synthetic()
    pred = factory().fit(ds)
    rng = np.random.default_rng(0)
    for user in ds.users[:8]:
        positions = np.arange(1, len(user))
        before = pred.score_user(user, positions)
        for p in rng.choice(positions, size=4, replace=False):
            future = copy.deepcopy(user)
            future.places[p:] = rng.integers(0, ds.num_places, size=len(user) - p)
            after = pred.score_user(future, np.array([p]))
            np.testing.assert_array_equal(after[0], before[p - 1])


def change_targets(ds: Dataset, split: str, seed: int) -> Dataset:
    ds = copy.deepcopy(ds)
    rng = np.random.default_rng(seed)
    for user in ds.users:
        pos = user.split(split)
        user.places[pos] = rng.integers(0, ds.num_places, size=len(pos))
    return ds


def test_fit_uses_training_samples_and_weights_are_chosen_on_validation():
    ds = synthetic()
    grid = interpolation_grid(0.25)
    ref = Markov(grid=grid).fit(ds)
    other_test = Markov(grid=grid).fit(change_targets(ds, "test", 1))
    assert other_test.weights_ == ref.weights_
    assert other_test.search_ == ref.search_
    assert (other_test.trans_counts_ != ref.trans_counts_).nnz == 0
    np.testing.assert_array_equal(other_test.pop_counts_, ref.pop_counts_)
    # The search does look at validation targets.
    other_val = Markov(grid=grid).fit(change_targets(ds, "validation", 2))
    assert [r["mrr"] for r in other_val.search_] != [r["mrr"] for r in ref.search_]
    # ... and the global statistics at training targets only.
    other_train = Markov("global").fit(change_targets(ds, "train", 3))
    assert (other_train.trans_counts_ != ref.trans_counts_).nnz > 0


def test_weight_search_ranks_equal_dense_ranks():
    ds = synthetic(seed=1)
    pred = Markov(grid=[(1.0, 0.0, 0.0, 0.0)]).fit(ds)
    cands = pred.candidate_set(ds, "validation")
    for weights in [
        (1, 0, 0, 0),
        (0, 1, 0, 0),
        (0, 0, 0, 1),
        (0.2, 0.3, 0.5, 0.01),
        (0, 0, 0, 0.0),
    ]:
        pred.weights_ = tuple(float(w) for w in weights)
        _, _, _, dense = evaluate_predictor(pred, ds, "validation")
        np.testing.assert_array_equal(cands.ranks(pred.weights_), dense)
    # All-zero weights tie every place: the pessimistic rank is L for every sample.
    assert (dense == ds.num_places).all()


def test_interpolation_grid():
    grid = interpolation_grid()
    assert len(grid) == 264 and len(set(grid)) == 264
    assert all(abs(sum(w[:3]) - 1) < 1e-9 for w in grid)
    assert {w[3] for w in grid} == {0.0, 0.001, 0.01, 0.1}
    assert len(interpolation_grid(0.5)) == 6 * 4
    with pytest.raises(ValueError, match="step"):
        interpolation_grid(0.3)


# ---------------------------------------------------------------------- real NYC figures


@pytest.fixture(scope="module")
def nyc() -> Dataset:
    if not (NYC / "checkins.csv").exists():
        pytest.skip(f"{NYC} not found: real data is not shipped with the repository")
    import pandas as pd

    from fedgeo.data.protocol import preprocess

    table = pd.read_csv(NYC / "checkins.csv")
    table["timestamp"] = table.pop("time_min").astype("int64") * 60
    return preprocess(table, name="foursquare-nyc")


# Test Acc@1 on NYC, default protocol. The computation is deterministic, so these are
# exact reproductions; the tolerance 0.005 (~12 of the 2,335 test samples) absorbs small
# protocol corrections but not a change of method (history "all" vs "train" moves the
# figures by 0.018-0.031).
NYC_ACC1 = [
    ("most-frequent", {"history": "all"}, 0.2463),
    ("markov", {"history": "all"}, 0.2737),
    # The lead's reference figures (0.228 and 0.243): personal statistics from the
    # user's training trajectories only.
    ("most-frequent", {"history": "train"}, 0.228),
    ("markov", {"history": "train"}, 0.243),
]


def test_nyc_reference_figures(nyc):
    assert nyc.num_samples("test") == 2335
    t0 = time.perf_counter()
    got = {}
    for method, kwargs, expected in NYC_ACC1:
        pred = make_predictor(method, **kwargs).fit(nyc)
        metrics, _, _, ranks = evaluate_predictor(pred, nyc, "test")
        got[(method, kwargs["history"])] = metrics["acc@1"]
        assert metrics["acc@1"] == pytest.approx(expected, abs=0.005), (method, kwargs)
        if method == "markov":
            assert pred.params()["weights_chosen_on"] == "validation"
    assert time.perf_counter() - t0 < 20
    popular, *_ = evaluate_predictor(GlobalPopularity().fit(nyc), nyc, "test")
    assert popular["acc@1"] < 0.02 < got[("most-frequent", "all")]


# --------------------------------------------------------------------------- the command


def run_baseline(argv: list[str]) -> int:
    import argparse

    from fedgeo.cli import baseline_cmd

    parser = argparse.ArgumentParser(prog="fedgeo")
    baseline_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["baseline", *argv])
    return args.func(args)


def test_baseline_command_writes_consistent_result_files(tmp_path, capsys):
    import json

    import pandas as pd

    from fedgeo.data.synthetic import SyntheticConfig, generate_city
    from fedgeo.metrics import compute_metrics

    table = generate_city(SyntheticConfig(seed=3, num_users=25, num_places=70, days=20))
    table["location_id"] = "v" + table["location_id"].astype(str)  # string ids survive
    data = tmp_path / "checkins.csv"
    table[["user_id", "location_id", "latitude", "longitude", "timestamp"]].to_csv(
        data, index=False
    )
    out = tmp_path / "out" / "markov"
    assert run_baseline(["--data", str(data), "--method", "markov", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("baseline markov/interpolated: test acc@1=") and "\n" not in line

    result = json.loads((out / "metrics.json").read_text())
    assert result["method"] == "baseline:markov"
    assert result["predictor"]["weights_chosen_on"] == "validation"
    assert set(result["predictor"]["weights"]) == {"personal", "global", "frequency", "popularity"}
    assert {"load_s", "fit_s", "evaluate_s"} <= set(result["timings_s"])
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == ["user_id", "target", "rank"]
    assert len(preds) == result["test"]["samples"] == result["dataset"]["samples"]["test"] > 0
    assert set(preds["target"]) <= set(table["location_id"])
    overall = {k: v for k, v in result["test"].items() if "-" not in k}
    assert compute_metrics(preds["rank"].to_numpy()) == pytest.approx(overall)
    test = result["test"]
    assert test["return-samples"] + test["new-samples"] == test["samples"]
    assert test["return-samples"] > 0 and test["new-samples"] > 0
    assert f"acc@1={result['test']['acc@1']:.4f}" in line


def test_baseline_command_without_data_uses_the_synthetic_city(tmp_path, capsys):
    import json

    assert run_baseline(["--method", "popular", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["dataset"]["name"] == "synthetic"
    assert result["predictor"] == {"method": "popular"}
    assert "baseline popular:" in capsys.readouterr().out
