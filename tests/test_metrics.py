"""Ranking metrics: pessimistic ties, NaN, exact micro-averaging, numpy/torch agreement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedgeo.metrics import (
    BREAKDOWN_KEYS,
    METRIC_KEYS,
    MetricSums,
    breakdown_metrics,
    breakdown_sums,
    compute_metrics,
    rank_new_places,
    ranks_from_scores,
    visited_before,
)
from fedgeo.results import write_metrics_json, write_predictions_csv


def both_paths(scores, targets) -> np.ndarray:
    """Ranks from the numpy and the torch path, asserted equal."""
    r_np = ranks_from_scores(np.asarray(scores), np.asarray(targets))
    r_t = ranks_from_scores(torch.as_tensor(np.asarray(scores)), torch.as_tensor(targets))
    assert r_np.dtype == np.int64 and r_t.dtype == np.int64
    np.testing.assert_array_equal(r_np, r_t)
    return r_np


def test_rank_counts_places_scoring_higher():
    scores = [[0.1, 0.5, 0.3, 0.2], [0.9, 0.1, 0.2, 0.3]]
    np.testing.assert_array_equal(both_paths(scores, [2, 0]), [2, 1])


def test_tie_never_favours_the_target():
    # Target tied with two others (and one place above): 1 + 3 places >= target.
    scores = [[0.5, 0.2, 0.2, 0.2, 0.1], [0.2, 0.2, 0.2, 0.1, 0.0]]
    np.testing.assert_array_equal(both_paths(scores, [2, 0]), [4, 3])


def test_all_equal_scores_rank_last():
    scores = np.zeros((3, 7))
    np.testing.assert_array_equal(both_paths(scores, [0, 3, 6]), [7, 7, 7])


def test_nan_scores_count_as_minus_infinity_and_nan_target_ranks_last():
    nan = float("nan")
    scores = [
        [nan, 0.1, nan, 0.3],  # target 1: only place 3 is above -> rank 2
        [0.4, nan, 0.2, 0.3],  # target NaN -> rank L = 4
        [nan, nan, nan, -math.inf],  # target -inf ties with the NaN (= -inf) places
    ]
    np.testing.assert_array_equal(both_paths(scores, [1, 1, 3]), [2, 4, 4])


def test_integer_scores_and_float32_tensors():
    np.testing.assert_array_equal(ranks_from_scores(np.array([[3, 1, 3]]), [0]), [2])
    t = torch.tensor([[0.5, 0.25, 0.75]], dtype=torch.float32)
    np.testing.assert_array_equal(ranks_from_scores(t, torch.tensor([0])), [2])


def test_random_scores_numpy_and_torch_agree_with_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float64)  # many ties
    targets = rng.integers(0, 30, size=50)
    expected = [
        1 + sum(scores[i, j] >= scores[i, targets[i]] for j in range(30) if j != targets[i])
        for i in range(50)
    ]
    np.testing.assert_array_equal(both_paths(scores, targets), expected)


def test_bad_shapes_and_targets_raise():
    with pytest.raises(ValueError, match="2-D"):
        ranks_from_scores(np.zeros(3), [0])
    with pytest.raises(ValueError, match="shape"):
        ranks_from_scores(np.zeros((2, 3)), [0])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ranks_from_scores(np.zeros((1, 3)), [3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ranks_from_scores(torch.zeros((1, 3)), torch.tensor([-1]))
    assert ranks_from_scores(np.zeros((0, 3)), np.zeros(0, dtype=int)).shape == (0,)


def test_metrics_hand_computed():
    ranks = [1, 2, 5, 10, 11, 100]
    m = compute_metrics(ranks)
    assert list(m) == list(METRIC_KEYS)
    assert m["samples"] == 6
    assert m["acc@1"] == pytest.approx(1 / 6)
    assert m["acc@5"] == pytest.approx(3 / 6)
    assert m["acc@10"] == pytest.approx(4 / 6)
    # MRR is untruncated: ranks 11 and 100 still count.
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 11 + 1 / 100) / 6)
    ndcg = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert m["ndcg@10"] == pytest.approx(ndcg)


def test_ndcg_per_rank_values():
    assert compute_metrics([1])["ndcg@10"] == 1.0
    assert compute_metrics([3])["ndcg@10"] == pytest.approx(0.5)  # 1/log2(4)
    assert compute_metrics([10])["ndcg@10"] == pytest.approx(1 / math.log2(11))
    assert compute_metrics([11])["ndcg@10"] == 0.0


def test_empty_gives_zeros_without_dividing_by_zero():
    m = compute_metrics(np.zeros(0, dtype=np.int64))
    assert m == {
        "acc@1": 0.0,
        "acc@5": 0.0,
        "acc@10": 0.0,
        "mrr": 0.0,
        "ndcg@10": 0.0,
        "samples": 0,
    }
    assert MetricSums().finalize() == m


def test_ranks_below_one_are_rejected():
    with pytest.raises(ValueError, match="1-based"):
        MetricSums.from_ranks([0, 1])


def test_sums_add_up_to_the_metrics_of_concatenated_ranks():
    rng = np.random.default_rng(1)
    chunks = [rng.integers(1, 60, size=n) for n in (0, 1, 17, 250, 3)]
    total = sum(MetricSums.from_ranks(c) for c in chunks)
    direct = compute_metrics(np.concatenate(chunks))
    merged = total.finalize()
    assert merged["samples"] == direct["samples"] == 271
    for key in ("acc@1", "acc@5", "acc@10"):
        assert merged[key] == direct[key]  # integer counts: exact
    for key in ("mrr", "ndcg@10"):
        assert merged[key] == pytest.approx(direct[key], rel=1e-12, abs=0)


def test_to_dict_round_trip_is_flat_scalars():
    s = MetricSums.from_ranks([1, 4, 12])
    d = s.to_dict()
    assert set(d) == {"count", "hits@1", "hits@5", "hits@10", "rr_sum", "ndcg@10_sum"}
    assert all(isinstance(v, int | float) for v in d.values())
    assert MetricSums.from_dict(d) == s
    prefixed = s.to_dict(prefix="val_")
    assert "val_count" in prefixed
    assert MetricSums.from_dict({**prefixed, "other": 1}, prefix="val_") == s
    with pytest.raises(KeyError, match="hits@5"):
        MetricSums.from_dict({k: v for k, v in d.items() if k != "hits@5"})


def test_metrics_json_is_strict_and_holds_extra_fields(tmp_path):
    test = compute_metrics([1, 3])
    val = {**compute_metrics([2]), "mrr": float("nan")}
    out = tmp_path / "a" / "b"
    path = write_metrics_json(
        out,
        test=test,
        validation=val,
        method="x",
        timings_s={"fit_s": np.float32(1.5)},
        weights=(0.1, float("inf")),
    )
    data = json.loads(path.read_text())  # strict JSON: NaN would not parse back as null
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert data["test"] == test
    assert data["validation"]["mrr"] is None
    assert data["method"] == "x" and data["timings_s"]["fit_s"] == 1.5
    assert data["weights"] == [0.1, None]


def test_predictions_csv(tmp_path):
    path = write_predictions_csv(
        tmp_path / "new", ["u1", np.int64(7)], np.array([101, 5]), np.array([3, 1])
    )
    assert path.read_text().splitlines() == ["user_id,target,rank", "u1,101,3", "7,5,1"]
    with pytest.raises(ValueError, match="length"):
        write_predictions_csv(tmp_path, [1], [2, 3], [1, 1])


def test_excluded_places_are_not_counted_in_the_rank():
    scores = np.array([[0.9, 0.8, 0.5, 0.5, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5]])
    exclude = np.array([[True, False, False, True, False], [False, False, False, False, True]])
    # Row 0, target 2: above or tied are 0 (excluded), 1 and 3 (excluded) -> rank 2.
    # Row 1, target 0: every other place scores higher; place 4 is excluded -> rank 4.
    for s, t, e in (
        (scores, [2, 0], exclude),
        (torch.as_tensor(scores), torch.tensor([2, 0]), torch.as_tensor(exclude)),
    ):
        np.testing.assert_array_equal(ranks_from_scores(s, t, exclude=e), [2, 4])


def test_exclusion_agrees_with_ranking_the_kept_places_alone():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(40, 25)).astype(np.float64)
    targets = rng.integers(0, 25, size=40)
    exclude = rng.random((40, 25)) < 0.4
    exclude[np.arange(40), targets] = False
    expected = [
        1
        + sum(
            scores[i, j] >= scores[i, targets[i]]
            for j in range(25)
            if j != targets[i] and not exclude[i, j]
        )
        for i in range(40)
    ]
    r_np = ranks_from_scores(scores, targets, exclude=exclude)
    r_t = ranks_from_scores(
        torch.as_tensor(scores), torch.as_tensor(targets), torch.as_tensor(exclude)
    )
    np.testing.assert_array_equal(r_np, expected)
    np.testing.assert_array_equal(r_t, expected)


def test_nan_target_ranks_last_among_the_kept_places():
    scores = [[0.3, float("nan"), 0.2, 0.1]]
    exclude = [[True, False, False, False]]
    for s in (np.array(scores), torch.tensor(scores)):
        np.testing.assert_array_equal(ranks_from_scores(s, [1], exclude=np.array(exclude)), [3])


def test_bad_exclusions_raise():
    with pytest.raises(ValueError, match="own target"):
        ranks_from_scores(np.zeros((1, 3)), [1], exclude=np.array([[False, True, False]]))
    with pytest.raises(ValueError, match="own target"):
        ranks_from_scores(torch.zeros((1, 3)), [1], exclude=torch.tensor([[False, True, False]]))
    with pytest.raises(ValueError, match="shape"):
        ranks_from_scores(np.zeros((2, 3)), [0, 1], exclude=np.zeros((2, 4), dtype=bool))


def test_visited_before_marks_only_earlier_check_ins():
    visited = visited_before([3, 1, 3, 0], [0, 2, 3], num_places=5)
    np.testing.assert_array_equal(
        visited,
        [
            [False, False, False, False, False],
            [False, True, False, True, False],
            [False, True, False, True, False],
        ],
    )


def test_rank_new_places_ranks_new_targets_among_the_unvisited_only():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(6, 8)).astype(np.float32)
    scores[1, 2] = scores[1, 5]  # a tie: pessimistic
    targets = np.array([0, 2, 4, 7, 3, 6])
    visited = rng.random((6, 8)) < 0.5
    visited[[0, 2], targets[[0, 2]]] = True  # two returns
    visited[[1, 3, 4, 5], targets[[1, 3, 4, 5]]] = False
    overall = ranks_from_scores(scores, targets)
    above = scores >= scores[np.arange(6), targets][:, None]
    expected = np.where(visited[np.arange(6), targets], overall, (above & ~visited).sum(axis=1))
    for s, t in ((scores, targets), (torch.as_tensor(scores), torch.as_tensor(targets))):
        for given in (None, overall):
            new, ranks = rank_new_places(s, t, visited, ranks=given)
            np.testing.assert_array_equal(new, [False, True, False, True, True, True])
            np.testing.assert_array_equal(ranks, expected)
    assert not visited[[1, 3], targets[[1, 3]]].any()  # the mask is not changed
    with pytest.raises(ValueError, match="ranks has 5 rows, targets 6"):
        rank_new_places(scores, targets, visited, ranks=overall[:5])


def test_breakdown_splits_return_and_new_place_samples():
    ranks = np.array([1, 7, 3, 40, 2])
    among_new = np.array([1, 2, 3, 9, 2])  # read only where new
    new = np.array([False, True, False, True, False])
    parts = breakdown_sums(ranks, among_new, new)
    assert parts["return-"] == MetricSums.from_ranks([1, 3, 2])
    assert parts["new-"] == MetricSums.from_ranks([2, 9])
    metrics = breakdown_metrics(parts)
    assert list(metrics) == list(BREAKDOWN_KEYS)
    assert metrics["return-samples"] == 3 and metrics["new-samples"] == 2
    assert metrics["return-acc@1"] == pytest.approx(1 / 3)
    assert metrics["new-mrr"] == pytest.approx((1 / 2 + 1 / 9) / 2)
    with pytest.raises(ValueError, match="differ in length"):
        breakdown_sums(ranks, among_new[:3], new)


def test_total_is_exact_and_order_free():
    rng = np.random.default_rng(2)
    parts = [MetricSums.from_ranks(rng.integers(1, 50, size=n)) for n in (3, 0, 17, 9)]
    total = MetricSums.total(parts)
    assert total == MetricSums.total(parts[::-1])
    assert total.count == 29 and total.finalize() == pytest.approx(sum(parts).finalize())
    assert MetricSums().finalize("new-") == {f"new-{k}": 0 for k in METRIC_KEYS}
