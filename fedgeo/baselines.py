"""Reference predictors: popularity, per-user frequency and first-order Markov chains.

Every predictor follows the sample contract of :mod:`fedgeo.data.dataset`: the scores
for position ``p`` of a user use only ``places[:p]`` (the user's past, whatever split it
belongs to) and statistics fitted on TRAINING samples. ``fit(dataset)`` learns the
global statistics; ``score_user(user, positions)`` returns an ``(n, L)`` float64 array
of scores (higher is better) ranked by :func:`fedgeo.metrics.ranks_from_scores`, whose
ties never favour the target.

Global statistics (from training samples only; ``p`` in ``user.train``):

* popularity ``P_pop(l) = N(l) / sum_l' N(l')`` with ``N(l)`` the number of training
  targets ``places[p] == l``;
* global transitions ``P_g(l | a) = T(a, l) / sum_l' T(a, l')`` with ``T(a, l)`` the number
  of training samples with ``places[p-1] == a`` and ``places[p] == l``. A training sample
  is never the first check-in of its trajectory, so these transitions never cross a
  trajectory boundary (a gap longer than the protocol's ``gap_hours``).

Personal statistics of the sample at ``p`` (the user's history ``H_p``: positions
``q < p``; with ``history="train"`` only those in the user's training trajectories):

* frequency ``P_f(l) = n_p(l) / |H_p|`` with ``n_p(l)`` the visits of ``l`` in ``H_p``;
* personal transitions ``P_u(l | a) = t_p(a, l) / sum_l' t_p(a, l')`` with ``t_p(a, l)`` the
  consecutive pairs ``(places[q-1], places[q]) == (a, l)`` with ``q - 1, q`` in ``H_p`` and
  in the same trajectory (like the global ones, they never cross a trajectory boundary).

``a = places[p-1]`` is the last place visited (always in the sample's own trajectory).
Where a probability's denominator is 0 it is 0 for every place.

Back-offs: a pure count leaves many places tied (e.g. every place the user never
visited), and the metric breaks ties against the target. The single-statistic predictors
therefore add a lower-order statistic scaled so that it only orders places the primary
statistic leaves tied (a lexicographic order, exact in float64 at these magnitudes):

* :class:`GlobalPopularity`: ``N(l)`` (pure; its ties are places with equal counts).
* :class:`MostFrequent`: ``n_p(l) + P_pop(l) / 2`` (``P_pop / 2 < 1`` never overturns a
  count).
* :class:`Markov` ``variant="global"``: ``T(a, l) + P_pop(l) / 2``.
* :class:`Markov` ``variant="personal"``: ``t_p(a, l) + (n_p(l) + P_pop(l) / 2) / (|H_p| + 1)``
  (transitions, then frequency, then popularity).
* :class:`Markov` ``variant="interpolated"``:
  ``w_u P_u(l|a) + w_g P_g(l|a) + w_f P_f(l) + w_pop P_pop(l)``, the weights chosen on the
  VALIDATION samples by the grid search of :func:`interpolation_grid` (highest
  validation MRR, then Acc@1, then first in grid order).
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedgeo.data.dataset import Dataset, UserData
from fedgeo.metrics import (
    MetricSums,
    breakdown_metrics,
    breakdown_sums,
    compute_metrics,
    rank_new_places,
    ranks_from_scores,
    visited_before,
)

HISTORIES = ("all", "train")
MARKOV_VARIANTS = ("interpolated", "global", "personal")
SELECTION_METRICS = ("mrr", "acc@1")


class Predictor(ABC):
    """A next-location reference predictor (see the module docstring)."""

    name: str = "predictor"

    def __init__(self) -> None:
        self.num_places_: int | None = None
        self.pop_counts_: np.ndarray | None = None
        self.pop_prob_: np.ndarray | None = None

    def fit(self, dataset: Dataset) -> Predictor:
        """Learn the global statistics from the training samples; return ``self``."""
        self._fit_popularity(dataset)
        return self

    @abstractmethod
    def score_user(self, user: UserData, positions: np.ndarray) -> np.ndarray:
        """``(len(positions), L)`` float64 scores of every place for each sample."""

    def params(self) -> dict[str, Any]:
        """The settings (and fitted choices) to report in ``metrics.json``."""
        return {"method": self.name}

    # -- shared pieces ---------------------------------------------------------------
    def _fit_popularity(self, dataset: Dataset) -> None:
        num_places = dataset.num_places
        counts = np.zeros(num_places, dtype=np.int64)
        for user in dataset.users:
            counts += np.bincount(user.places[user.train], minlength=num_places)
        self.num_places_ = num_places
        self.pop_counts_ = counts
        total = counts.sum()
        self.pop_prob_ = counts / total if total > 0 else np.zeros(num_places)

    def _check_fitted(self) -> int:
        if self.num_places_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(dataset) first")
        return self.num_places_


class GlobalPopularity(Predictor):
    """Score = the number of training targets at the place, the same for every sample."""

    name = "popular"

    def score_user(self, user: UserData, positions: np.ndarray) -> np.ndarray:
        self._check_fitted()
        positions = _positions(user, positions)
        row = self.pop_counts_.astype(np.float64)
        return np.tile(row, (len(positions), 1))


class MostFrequent(Predictor):
    """Score = the user's past visits of the place, then global popularity (back-off)."""

    name = "most-frequent"

    def __init__(self, history: str = "all") -> None:
        super().__init__()
        self.history = _check_choice("history", history, HISTORIES)

    def score_user(self, user: UserData, positions: np.ndarray) -> np.ndarray:
        num_places = self._check_fitted()
        positions = _positions(user, positions)
        hist = UserHistory(user, self.history)
        scores = np.zeros((len(positions), num_places))
        scores[:, hist.local] = hist.freq_counts(positions)
        scores += 0.5 * self.pop_prob_
        return scores

    def params(self) -> dict[str, Any]:
        return {"method": self.name, "history": self.history}


class Markov(Predictor):
    """First-order Markov chain: global, personal, or an interpolation of both with
    frequency and popularity (weights chosen on validation).

    Parameters
    ----------
    variant : ``"interpolated"`` (default), ``"global"`` or ``"personal"``.
    weights : fixed ``(w_u, w_g, w_f, w_pop)`` for ``"interpolated"``; ``None`` = grid search
        on the validation samples at :meth:`fit`.
    history : ``"all"`` (default: the user's whole past) or ``"train"`` (only check-ins in
        the user's training trajectories) for the personal statistics.
    grid : candidate weight tuples (default :func:`interpolation_grid`).
    selection : validation metric that picks the weights, ``"mrr"`` (default) or ``"acc@1"``;
        ties go to the other metric, then to the earlier grid entry.
    """

    name = "markov"

    def __init__(
        self,
        variant: str = "interpolated",
        weights: tuple[float, float, float, float] | None = None,
        *,
        history: str = "all",
        grid: list[tuple[float, float, float, float]] | None = None,
        selection: str = "mrr",
    ) -> None:
        super().__init__()
        self.variant = _check_choice("variant", variant, MARKOV_VARIANTS)
        self.history = _check_choice("history", history, HISTORIES)
        self.selection = _check_choice("selection", selection, SELECTION_METRICS)
        if weights is not None:
            weights = tuple(float(w) for w in weights)
            if len(weights) != 4 or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError("weights must be 4 non-negative numbers, not all zero")
        self.weights = weights
        self.grid = grid
        self.weights_: tuple[float, float, float, float] | None = weights
        self.search_: list[dict[str, Any]] = []
        self.search_seconds_: float = 0.0
        self.trans_counts_: sp.csr_matrix | None = None
        self.trans_prob_: sp.csr_matrix | None = None

    def fit(self, dataset: Dataset) -> Markov:
        self._fit_popularity(dataset)
        num_places = dataset.num_places
        src = [u.places[u.train - 1] for u in dataset.users]
        dst = [u.places[u.train] for u in dataset.users]
        src = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
        dst = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
        counts = sp.coo_matrix(
            (np.ones(len(src)), (src, dst)), shape=(num_places, num_places)
        ).tocsr()
        counts.sum_duplicates()
        self.trans_counts_ = counts
        row_sums = np.asarray(counts.sum(axis=1)).ravel()
        inv = np.divide(1.0, row_sums, out=np.zeros_like(row_sums), where=row_sums > 0)
        self.trans_prob_ = sp.diags(inv) @ counts
        self.trans_prob_ = sp.csr_matrix(self.trans_prob_)
        if self.variant == "interpolated" and self.weights is None:
            t0 = time.perf_counter()
            self.weights_, self.search_ = self._grid_search(dataset)
            self.search_seconds_ = time.perf_counter() - t0
        return self

    def score_user(self, user: UserData, positions: np.ndarray) -> np.ndarray:
        num_places = self._check_fitted()
        positions = _positions(user, positions)
        n = len(positions)
        last = user.places[positions - 1] if n else np.zeros(0, dtype=np.int64)
        if self.variant == "global":
            scores = self.trans_counts_[last].toarray()
            scores += 0.5 * self.pop_prob_
            return scores
        hist = UserHistory(user, self.history)
        trans = hist.transition_counts(positions)
        if self.variant == "personal":
            freq = hist.freq_counts(positions)
            size = hist.sizes(positions)[:, None] + 1.0
            scores = np.zeros((n, num_places))
            scores += 0.5 * self.pop_prob_ / size
            scores[:, hist.local] += trans + freq / size
            return scores
        w_u, w_g, w_f, w_pop = self.weights_
        p_u = np.zeros((n, num_places))
        p_u[:, hist.local] = _normalize_rows(trans)
        p_f = np.zeros((n, num_places))
        p_f[:, hist.local] = _normalize_rows(hist.freq_counts(positions))
        p_g = self.trans_prob_[last].toarray()
        return combine((w_u, w_g, w_f, w_pop), p_u, p_g, p_f, self.pop_prob_)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.name, "variant": self.variant}
        if self.variant != "global":  # the global chain has no personal statistics
            out["history"] = self.history
        if self.variant == "interpolated":
            names = ("personal", "global", "frequency", "popularity")
            weights = self.weights_
            out["weights"] = dict(zip(names, weights, strict=True)) if weights else None
            out["weights_chosen_on"] = "validation" if self.weights is None else "given"
            if self.weights is None:
                out["selection"] = self.selection
                out["grid_size"] = len(self.search_)
                out["search_s"] = self.search_seconds_
                best = max(self.search_, key=self._search_key, default=None)
                out["validation_at_best"] = best
        return out

    # -- weight search -----------------------------------------------------------------
    def _search_key(self, row: dict[str, Any]) -> tuple[float, float, int]:
        other = "acc@1" if self.selection == "mrr" else "mrr"
        return (row[self.selection], row[other], -row["index"])

    def _grid_search(self, dataset: Dataset):
        grid = self.grid if self.grid is not None else interpolation_grid()
        if not grid:
            raise ValueError("the weight grid is empty")
        cands = self.candidate_set(dataset, "validation")
        rows = []
        for index, w in enumerate(grid):
            ranks = cands.ranks(tuple(float(x) for x in w))
            m = compute_metrics(ranks)
            rows.append(
                {
                    "index": index,
                    "weights": list(w),
                    "mrr": m["mrr"],
                    "acc@1": m["acc@1"],
                    "samples": m["samples"],
                }
            )
        best = max(rows, key=self._search_key)
        return tuple(float(x) for x in grid[best["index"]]), rows

    def candidate_set(self, dataset: Dataset, split: str) -> CandidateSet:
        """The sparse components of every ``split`` sample (see :class:`CandidateSet`)."""
        self._check_fitted()
        parts = []
        for user in dataset.users:
            positions = _positions(user, user.split(split))
            if len(positions) == 0:
                continue
            hist = UserHistory(user, self.history)
            p_u_local = _normalize_rows(hist.transition_counts(positions))
            p_f_local = _normalize_rows(hist.freq_counts(positions))
            last = user.places[positions - 1]
            targets = user.places[positions]
            for i in range(len(positions)):
                row = self.trans_prob_[last[i]]
                cand = np.union1d(hist.local, row.indices)
                p_u = np.zeros(len(cand))
                p_f = np.zeros(len(cand))
                p_g = np.zeros(len(cand))
                at_local = np.searchsorted(cand, hist.local)
                p_u[at_local] = p_u_local[i]
                p_f[at_local] = p_f_local[i]
                p_g[np.searchsorted(cand, row.indices)] = row.data
                target_at = int(np.searchsorted(cand, targets[i]))
                parts.append((cand, p_u, p_g, p_f, target_at))
        return CandidateSet(parts, self.pop_prob_)


def combine(
    weights: tuple[float, float, float, float],
    p_u: np.ndarray,
    p_g: np.ndarray,
    p_f: np.ndarray,
    p_pop: np.ndarray,
) -> np.ndarray:
    """``w_u p_u + w_g p_g + w_f p_f + w_pop p_pop``, always in this order of float64
    operations so that dense and sparse evaluation give bit-identical scores."""
    w_u, w_g, w_f, w_pop = weights
    return ((w_u * p_u + w_g * p_g) + w_f * p_f) + w_pop * p_pop


class CandidateSet:
    """Sparse form of the interpolated scores of many samples, for a fast weight search.

    For each sample only the *candidates* (the user's places and the successors of the
    last place in the global transitions) can have non-zero ``P_u``, ``P_g`` or ``P_f``;
    every other place scores exactly ``w_pop * P_pop(l)``, so the number of those that tie
    with or beat the target is counted with a binary search in the sorted popularity.
    The ranks equal those of the dense scores (tested).
    """

    def __init__(self, parts: list[tuple], pop_prob: np.ndarray) -> None:
        self.num_samples = len(parts)
        self.num_places = len(pop_prob)
        sizes = np.array([len(p[0]) for p in parts], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(sizes)[:-1]] if len(parts) else np.zeros(0, np.int64)

        def cat(k: int) -> np.ndarray:
            return np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)

        cand = cat(0).astype(np.int64)
        self.sample = np.repeat(np.arange(self.num_samples), sizes)
        self.p_u, self.p_g, self.p_f = cat(1), cat(2), cat(3)
        self.p_pop = pop_prob[cand]
        self.target_flat = offsets + np.array([p[4] for p in parts], dtype=np.int64)
        self.is_target = np.zeros(len(cand), dtype=bool)
        self.is_target[self.target_flat] = True
        self.sizes = sizes
        self.sorted_pop = np.sort(pop_prob)

    def ranks(self, weights: tuple[float, float, float, float]) -> np.ndarray:
        """Pessimistic ranks of every sample's target under ``weights``."""
        if self.num_samples == 0:
            return np.zeros(0, dtype=np.int64)
        w_pop = weights[3]
        scores = combine(weights, self.p_u, self.p_g, self.p_f, self.p_pop)
        target = scores[self.target_flat]
        at_least = scores >= target[self.sample]
        # Candidates other than the target that tie with or beat it.
        beat_cand = np.bincount(
            self.sample, weights=at_least & ~self.is_target, minlength=self.num_samples
        )
        # Non-candidates score exactly 0 + w_pop * P_pop(l) (monotone in P_pop).
        pop_scores = w_pop * self.sorted_pop
        all_pop_at_least = self.num_places - np.searchsorted(pop_scores, target, side="left")
        cand_pop_at_least = np.bincount(
            self.sample,
            weights=(0.0 + w_pop * self.p_pop) >= target[self.sample],
            minlength=self.num_samples,
        )
        beat_other = all_pop_at_least - cand_pop_at_least
        return (1 + beat_cand + beat_other).astype(np.int64)


def interpolation_grid(step: float = 0.1) -> list[tuple[float, float, float, float]]:
    """Default weight grid ``(w_u, w_g, w_f, w_pop)`` of the interpolated Markov chain.

    ``w_u, w_g, w_f`` run over the multiples of ``step`` in ``[0, 1]`` that sum to 1 (the
    scores are scale-invariant, so fixing the sum loses nothing), each combined with a
    popularity weight ``w_pop`` in ``{0, 0.001, 0.01, 0.1}``: 66 x 4 = 264 tuples for the
    default step. Popularity probabilities are ~1e-4, so ``w_pop`` acts as a back-off for
    places the other statistics leave at zero and a tie-breaker among them.
    """
    n = round(1 / step)
    if n <= 0 or not np.isclose(n * step, 1.0):
        raise ValueError(f"step must divide 1, got {step!r}")
    out = []
    for i, j in itertools.product(range(n + 1), repeat=2):
        if i + j > n:
            continue
        k = n - i - j
        for w_pop in (0.0, 0.001, 0.01, 0.1):
            out.append((round(i * step, 10), round(j * step, 10), round(k * step, 10), w_pop))
    return out


class UserHistory:
    """One user's past statistics at any sample position (see the module docstring).

    Works on the user's distinct places ``local`` (sorted dense ids); all arrays it returns
    are over ``local``.
    """

    def __init__(self, user: UserData, history: str = "all") -> None:
        _check_choice("history", history, HISTORIES)
        places = np.asarray(user.places, dtype=np.int64)
        self.local, inv = np.unique(places, return_inverse=True)
        self.inv = inv.astype(np.int64)
        n, k = len(places), len(self.local)
        if history == "all":
            usable = np.ones(n, dtype=bool)
        else:
            usable = np.isin(user.traj_start, user.traj_start[user.train])
        self.usable = usable
        # cum[p, j] = visits of local place j among usable positions q < p.
        onehot = np.zeros((n + 1, k), dtype=np.int32)
        rows = np.flatnonzero(usable)
        onehot[rows + 1, self.inv[rows]] = 1
        self._cum = np.cumsum(onehot, axis=0)
        # Usable within-trajectory transitions (q-1 -> q), sorted by (source, q).
        q = np.arange(1, n)
        ok = (user.traj_start[q] <= q - 1) & usable[q] & usable[q - 1]
        q = q[ok]
        src = self.inv[q - 1]
        order = np.lexsort((q, src))
        self._q, self._src, self._dst = q[order], src[order], self.inv[q[order]]

    def freq_counts(self, positions: np.ndarray) -> np.ndarray:
        """``(n, k)`` visits of each local place in the history of each position."""
        return self._cum[positions].astype(np.float64)

    def sizes(self, positions: np.ndarray) -> np.ndarray:
        """``|H_p|`` for each position."""
        return self._cum[positions].sum(axis=1).astype(np.float64)

    def transition_counts(self, positions: np.ndarray) -> np.ndarray:
        """``(n, k)`` counts of the personal transitions from ``places[p-1]`` seen before
        ``p`` (pairs ``q-1 -> q`` with ``q <= p-1``)."""
        k = len(self.local)
        out = np.zeros((len(positions), k))
        for i, p in enumerate(positions):
            if p < 1:
                continue
            a = self.inv[p - 1]
            lo, hi = np.searchsorted(self._src, [a, a + 1])
            cut = lo + np.searchsorted(self._q[lo:hi], p - 1, side="right")
            out[i] = np.bincount(self._dst[lo:cut], minlength=k)
        return out


def evaluate_predictor(
    predictor: Predictor, dataset: Dataset, split: str = "test"
) -> tuple[dict[str, Any], list[Any], np.ndarray, np.ndarray]:
    """Rank every ``split`` sample's target with a fitted predictor.

    Returns ``(metrics, user_ids, targets, ranks)``: the metrics dict of
    :func:`fedgeo.metrics.compute_metrics`, and per sample (users in dataset order,
    positions ascending) the user id, the target's place id as in the input file and its
    rank.
    """
    user_ids: list[Any] = []
    targets: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    new_place: list[np.ndarray] = []
    new_place_ranks: list[np.ndarray] = []
    for user in dataset.users:
        positions = np.sort(np.asarray(user.split(split), dtype=np.int64))
        if len(positions) == 0:
            continue
        target = user.places[positions]
        scores = predictor.score_user(user, positions)
        overall = ranks_from_scores(scores, target)
        ranks.append(overall)
        visited = visited_before(user.places, positions, dataset.num_places)
        new, among_new = rank_new_places(scores, target, visited, ranks=overall)
        new_place.append(new)
        new_place_ranks.append(among_new)
        targets.append(target)
        user_ids.extend([user.user_id] * len(positions))

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    all_ranks, dense = joined(ranks, np.int64), joined(targets, np.int64)
    metrics = MetricSums.from_ranks(all_ranks).finalize()
    parts = breakdown_sums(all_ranks, joined(new_place_ranks, np.int64), joined(new_place, bool))
    metrics.update(breakdown_metrics(parts))
    return metrics, user_ids, np.asarray(dataset.places.ids)[dense], all_ranks


def make_predictor(method: str, **kwargs: Any) -> Predictor:
    """A predictor by its command-line name: ``popular``, ``most-frequent`` or ``markov``."""
    if method == "popular":
        return GlobalPopularity()
    if method == "most-frequent":
        return MostFrequent(**kwargs)
    if method == "markov":
        return Markov(**kwargs)
    raise ValueError(f"unknown method {method!r} (use popular, most-frequent or markov)")


def _normalize_rows(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def _positions(user: UserData, positions: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if len(pos) and (pos.min() < 1 or pos.max() >= len(user.places)):
        raise ValueError(
            f"sample positions must be in [1, {len(user.places)}) for user {user.user_id!r}"
        )
    return pos


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
