"""How well can new places be ranked from public coordinates and population counts?

A new-place target is a place its user had not visited before (docs/metrics.md); it is
ranked among the places the user had not visited. This screen scores every such place
with no network, first by a gravity model:

``s_l = a log(1 + visitors_l) + c log(1 + checkins_l) - b1 log(d(last, l) + eps)
- b2 log(d(centroid, l) + eps)``

``visitors_l`` and ``checkins_l`` count the users and check-ins at ``l`` in every
user's training prefix (the population prior's secure sum holds the visitors, capped per
user; the check-ins would take one more such sum),
``d(last, l)`` is the great-circle distance from the user's last place, and
``d(centroid, l)`` the distance from the centre of the places the user had visited. The
weights are chosen on the training split's new-place samples (a grid, best new-place
Acc@10) and ranked on validation (test only with ``--test``).

Then by a conditional logit over per-place features of what the **other** users did
(:data:`FEATURES`: co-visitors of the user's places, transitions from the last place,
visitors), the distances, and where the user's own check-ins lie, its weights fitted by
maximum likelihood on the same training samples. The last features add time and scale:
the other users at each place in the target's block of the day, the distance from the last
place relative to the user's usual move, and the distance's decay against the time since
the last check-in. One JSON line per ranking::

    python experiments/newplace_screen.py --data ../shared/data/foursquare-nyc/checkins.csv

``--late-half`` fits on training samples from the later half of each user's training range
only, closer to where validation and test samples lie in a user's history.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.metrics.pairwise import haversine_distances

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgeo.data.dataset import (  # noqa: E402
    BLOCKS_PER_DAY,
    Dataset,
    UserData,
    day_block,
)
from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.data.stats import EARTH_RADIUS_KM  # noqa: E402
from fedgeo.models.features import haversine_km  # noqa: E402

GRID = {
    "a": (0.0, 0.5, 1.0, 1.5, 2.0),
    "c": (0.0, 0.5, 1.0),
    "b1": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    "b2": (0.0, 0.5, 1.0, 2.0),
    "eps": (0.05, 0.3),
}
"""Weights searched on the training split (distances in km)."""


POPULATION_AND_DISTANCE = (
    "co-visitors",
    "co-visitors of the last place",
    "transitions from the last place",
    "visitors",
    "-log km from the last place",
    "-log km from the centre",
    "-km from the last place",
)
OWN_PLACES = ("-log km from the nearest own place", "own-visit density")
TIME_AND_SCALE = (
    "visitors at this time of day",
    "-km / the user's usual move",
    "-log km x log hours since the last check-in",
)
FEATURES = POPULATION_AND_DISTANCE + OWN_PLACES + TIME_AND_SCALE
"""Per-place features of the conditional logit. Counts are of the other users' training
prefixes (the sample's own user taken out), each user counted once per place or pair:
``co-visitors`` is ``log(1 + mean over the user's visited places v of C[v, l])`` with
``C[v, l]`` the users who visited both ``v`` and ``l``; the next two are
``log(1 + C[last, l])`` and ``log(1 + T[last, l])`` with ``T`` the users who moved from
``last`` to ``l``; ``visitors`` is ``log(1 + V[l])``. The last two read only the user's
own history before the sample: ``-log(0.05 + min_v d(v, l))`` over the places ``v`` it
visited, and ``log`` of the Gaussian kernel density of its check-ins at ``l``,
``sum_v n_v exp(-d(v, l)^2 / (2 h^2)) / sum_v n_v`` with ``h`` = :data:`OWN_DENSITY_KM`.
The time and scale features: ``log(1 + S[l, b])``, the other users who checked in at ``l``
in block ``b`` of the day (``fedgeo.data.dataset.SLOT_HOURS`` hours, local time) of the target;
``-d(last, l) / m`` with ``m`` the median km of the user's last :data:`USUAL_MOVES` moves
before the sample (at least :data:`MIN_USUAL_KM`); and ``-log(d(last, l) + 0.05) *
log(1 + hours since the last check-in)``, which lets the distance decay flatten when the
user has been away long."""

OWN_DENSITY_KM = 1.0
"""Bandwidth (km) of the own-visit density feature."""
USUAL_MOVES = 50
"""Moves (latest first) whose median distance is the user's usual move."""
MIN_USUAL_KM = 0.2
"""Floor of the usual move (km), for users who have barely moved."""

FEATURE_SETS = {
    "distance from the last place": ("-log km from the last place",),
    "distance + visitors at this time of day": (
        "-log km from the last place",
        "visitors at this time of day",
    ),
    "distance + co-visitors": ("-log km from the last place", "co-visitors"),
    "distance + transitions": ("-log km from the last place", "transitions from the last place"),
    "all seven population and distance features": POPULATION_AND_DISTANCE,
    "distance + the user's own places": ("-log km from the last place", *OWN_PLACES),
    "all nine features": POPULATION_AND_DISTANCE + OWN_PLACES,
    "all twelve features": FEATURES,
}
"""The conditional logits fitted and ranked, by name."""


@dataclass(frozen=True)
class NewPlaceSamples:
    """The new-place samples of one split, with their per-place distance features."""

    d_last: np.ndarray
    """``(n, L)`` km from each sample's last place to every place."""
    d_centroid: np.ndarray
    """``(n, L)`` km from the centre of the places the user had visited."""
    visited: np.ndarray
    """``(n, L)`` bool: places the user had visited before the sample (not ranked)."""
    target: np.ndarray
    """``(n,)`` the target place of each sample."""
    user: np.ndarray
    """``(n,)`` the index of each sample's user in the data set."""
    position: np.ndarray
    """``(n,)`` the target's position in its user's trajectory."""
    d_own: np.ndarray
    """``(n, L)`` km from the nearest place the user had visited."""
    own_density: np.ndarray
    """``(n, L)`` Gaussian kernel density of the user's check-ins before the sample
    (bandwidth :data:`OWN_DENSITY_KM`; see :data:`FEATURES`)."""
    day_block: np.ndarray
    """``(n,)`` the target's block of the day (local time, :data:`SLOT_HOURS` hours)."""
    usual_km: np.ndarray
    """``(n,)`` the user's usual move before the sample (:data:`FEATURES`)."""
    gap_hours: np.ndarray
    """``(n,)`` hours from the last check-in to the target."""


def training_popularity(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per place: distinct users and check-ins in every user's training prefix."""
    visitors = np.zeros(dataset.num_places)
    checkins = np.zeros(dataset.num_places)
    for user in dataset.users:
        if not len(user.train):
            continue
        prefix = user.places[: int(user.train.max()) + 1]
        np.add.at(checkins, prefix, 1)
        visitors[np.unique(prefix)] += 1
    return visitors, checkins


def day_blocks(user: UserData) -> np.ndarray:
    """Block of the day (local time, :data:`SLOT_HOURS` hours) of each check-in."""
    return day_block(user.local_times())


def usual_move_km(coords: np.ndarray, places: np.ndarray) -> float:
    """Median km of the last :data:`USUAL_MOVES` moves of ``places`` (``coords`` in
    radians), at least :data:`MIN_USUAL_KM`; :data:`MIN_USUAL_KM` without a move."""
    recent = places[-(USUAL_MOVES + 1) :]
    if len(recent) < 2:
        return MIN_USUAL_KM
    km = haversine_km(coords[recent[:-1]], coords[recent[1:]])
    return max(float(np.median(km)), MIN_USUAL_KM)


def new_place_samples(
    dataset: Dataset, split: str, limit: int = 0, seed: int = 0, late_half: bool = False
) -> NewPlaceSamples:
    """Every sample of ``split`` whose target its user had not visited before
    (``limit``: a seeded random subset of at most that many; ``late_half``: only targets
    in the later half of their user's positions of ``split``, by position)."""
    picks = []
    for u, user in enumerate(dataset.users):
        positions = user.split(split)
        middle = positions.min() + positions.max() if late_half and len(positions) else 0
        picks += [
            (u, int(p))
            for p in positions
            if p > 0 and user.places[p] not in user.places[:p] and 2 * p >= middle
        ]
    if limit and len(picks) > limit:
        chosen = np.random.default_rng(seed).choice(len(picks), limit, replace=False)
        picks = [picks[i] for i in sorted(chosen)]
    coords = np.radians(dataset.places.coordinates())
    n, num_places = len(picks), dataset.num_places
    last = np.empty((n, 2))
    centroid = np.empty((n, 2))
    visited = np.zeros((n, num_places), dtype=bool)
    d_own = np.empty((n, num_places), dtype=np.float32)
    own_density = np.empty((n, num_places), dtype=np.float32)
    target = np.empty(n, dtype=np.int64)
    day_block = np.empty(n, dtype=np.int64)
    usual_km = np.empty(n)
    gap_hours = np.empty(n)
    user_maps: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    for i, (u, p) in enumerate(picks):
        user = dataset.users[u]
        places = user.places
        if user_maps is None or user_maps[0] != u:  # picks come user by user
            distinct = np.unique(places)
            d_user = haversine_distances(coords[distinct], coords) * EARTH_RADIUS_KM
            kernel = np.exp(-(d_user**2) / (2 * OWN_DENSITY_KM**2))
            user_maps = (u, distinct, d_user, kernel, day_blocks(user))
        _, distinct, d_user, kernel, blocks = user_maps
        seen, visits = np.unique(places[:p], return_counts=True)
        last[i], centroid[i] = coords[places[p - 1]], coords[seen].mean(0)
        visited[i, seen] = True
        target[i] = places[p]
        rows = np.searchsorted(distinct, seen)
        d_own[i] = d_user[rows].min(0)
        own_density[i] = visits @ kernel[rows] / visits.sum()
        day_block[i] = blocks[p]
        usual_km[i] = usual_move_km(coords, places[:p])
        gap_hours[i] = max(float(user.times[p] - user.times[p - 1]), 0.0) / 3600.0
    return NewPlaceSamples(
        d_last=haversine_distances(last, coords) * EARTH_RADIUS_KM,
        d_centroid=haversine_distances(centroid, coords) * EARTH_RADIUS_KM,
        visited=visited,
        target=target,
        user=np.array([u for u, _ in picks], dtype=np.int64),
        position=np.array([p for _, p in picks], dtype=np.int64),
        d_own=d_own,
        own_density=own_density,
        day_block=day_block,
        usual_km=usual_km,
        gap_hours=gap_hours,
    )


def gravity_scores(
    samples: NewPlaceSamples,
    visitors: np.ndarray,
    checkins: np.ndarray,
    a: float,
    c: float,
    b1: float,
    b2: float,
    eps: float,
) -> np.ndarray:
    """``(n, L)`` scores of the gravity model (module docstring)."""
    popularity = a * np.log1p(visitors) + c * np.log1p(checkins)
    return (
        popularity[None] - b1 * np.log(samples.d_last + eps) - b2 * np.log(samples.d_centroid + eps)
    )


def new_place_metrics(scores: np.ndarray, samples: NewPlaceSamples) -> dict[str, float]:
    """New-place Acc@1, Acc@10 and MRR; visited places are not ranked, ties count
    against the target."""
    ranked = np.where(samples.visited, -np.inf, scores)
    own = ranked[np.arange(len(samples.target)), samples.target]
    rank = (ranked >= own[:, None]).sum(1)
    return {
        "new-acc@1": float((rank == 1).mean()),
        "new-acc@10": float((rank <= 10).mean()),
        "new-mrr": float((1.0 / rank).mean()),
        "samples": int(len(rank)),
    }


def fit_weights(
    samples: NewPlaceSamples, visitors: np.ndarray, checkins: np.ndarray
) -> dict[str, float]:
    """The grid point with the best new-place Acc@10 (then MRR) on ``samples``. The log
    terms are computed once per ``eps`` and per popularity count, not per grid point."""
    best_key, best = (-1.0, -1.0), {}
    log_visitors, log_checkins = np.log1p(visitors), np.log1p(checkins)
    for eps in GRID["eps"]:
        log_last = np.log(samples.d_last + eps)
        log_centroid = np.log(samples.d_centroid + eps)
        for a, c, b1, b2 in itertools.product(GRID["a"], GRID["c"], GRID["b1"], GRID["b2"]):
            popularity = a * log_visitors + c * log_checkins
            scores = popularity[None] - b1 * log_last - b2 * log_centroid
            m = new_place_metrics(scores, samples)
            if (m["new-acc@10"], m["new-mrr"]) > best_key:
                best_key = (m["new-acc@10"], m["new-mrr"])
                best = {"a": a, "c": c, "b1": b1, "b2": b2, "eps": eps}
    return best


@dataclass(frozen=True)
class PopulationCounts:
    """Who visited what in every user's training prefix, each user counted once."""

    member: sp.csr_matrix
    """``(users, L)`` 1 where the user's training prefix holds the place."""
    moves: list[np.ndarray]
    """Per user, its distinct moves ``i -> j`` as ``(k, 2)`` rows."""
    co_visitors: sp.csr_matrix
    """``(L, L)`` users who visited both places (zero diagonal)."""
    transitions: sp.csr_matrix
    """``(L, L)`` users who moved from ``i`` to ``j``."""
    visitors: np.ndarray
    """``(L,)`` users who visited the place."""
    block_visitors: np.ndarray
    """``(L, blocks)`` users who checked in at the place in each block of the day."""
    own_blocks: list[np.ndarray]
    """Per user, its distinct ``place * blocks + block`` keys."""


def population_counts(dataset: Dataset) -> PopulationCounts:
    """Co-visitor, transition and visitor counts of every user's training prefix."""
    num_places, num_users = dataset.num_places, len(dataset.users)
    rows, cols, moves = [np.empty(0, np.int64)], [np.empty(0, np.int64)], []
    blocks = BLOCKS_PER_DAY
    block_visitors, own_blocks = np.zeros(num_places * blocks), []
    for u, user in enumerate(dataset.users):
        end = int(user.train.max()) + 1 if len(user.train) else 0
        prefix = user.places[:end]
        own_blocks.append(np.unique(prefix * blocks + day_blocks(user)[:end]))
        block_visitors[own_blocks[-1]] += 1
        places = np.unique(prefix)
        rows.append(np.full(len(places), u))
        cols.append(places)
        moves.append(np.unique(np.stack([prefix[:-1], prefix[1:]], 1), axis=0))
    r, c = np.concatenate(rows), np.concatenate(cols)
    member = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(num_users, num_places))
    co_visitors = (member.T @ member).tolil()
    co_visitors.setdiag(0)
    every_move = np.concatenate(moves) if moves else np.empty((0, 2), np.int64)
    transitions = sp.csr_matrix(
        (np.ones(len(every_move)), (every_move[:, 0], every_move[:, 1])),
        shape=(num_places, num_places),
    )
    return PopulationCounts(
        member=member,
        moves=moves,
        co_visitors=co_visitors.tocsr(),
        transitions=transitions,
        visitors=np.asarray(member.sum(0)).ravel(),
        block_visitors=block_visitors.reshape(num_places, blocks),
        own_blocks=own_blocks,
    )


def ranking_features(
    samples: NewPlaceSamples, dataset: Dataset, counts: PopulationCounts
) -> np.ndarray:
    """``(n, L, len(FEATURES))`` features of every place for every sample, from the
    other users' counts (the sample's user's own contribution subtracted)."""
    out = np.empty((len(samples.target), dataset.num_places, len(FEATURES)), dtype=np.float32)
    for i, (u, p) in enumerate(zip(samples.user, samples.position, strict=True)):
        seen, last = np.flatnonzero(samples.visited[i]), int(dataset.users[u].places[p - 1])
        own = counts.member[u].toarray().ravel()
        own_moves = np.zeros(dataset.num_places)
        user_moves = counts.moves[u]
        own_moves[user_moves[user_moves[:, 0] == last, 1]] = 1
        in_seen = np.zeros(dataset.num_places)
        in_seen[seen] = 1
        # the user's own pairs (v, l), v among its places before the sample, v != l
        own_pairs = own * (own[seen].sum() - own * in_seen) / len(seen)
        co = np.asarray(counts.co_visitors[seen].mean(0)).ravel() - own_pairs
        co_last = counts.co_visitors[last].toarray().ravel() - own * own[last]
        moved = counts.transitions[last].toarray().ravel() - own_moves
        visitors = counts.visitors - own
        out[i, :, 0] = np.log1p(np.maximum(co, 0))
        out[i, :, 1] = np.log1p(np.maximum(co_last, 0))
        out[i, :, 2] = np.log1p(np.maximum(moved, 0))
        out[i, :, 3] = np.log1p(np.maximum(visitors, 0))
        out[i, :, 4] = -np.log(samples.d_last[i] + 0.05)
        out[i, :, 5] = -np.log(samples.d_centroid[i] + 0.05)
        out[i, :, 6] = -samples.d_last[i]
        out[i, :, 7] = -np.log(samples.d_own[i] + 0.05)
        out[i, :, 8] = np.log(samples.own_density[i] + 1e-12)
        block = int(samples.day_block[i])
        at_block = counts.block_visitors[:, block].copy()
        blocks = counts.block_visitors.shape[1]
        own_keys = counts.own_blocks[u]
        at_block[own_keys[own_keys % blocks == block] // blocks] -= 1
        out[i, :, 9] = np.log1p(np.maximum(at_block, 0))
        out[i, :, 10] = -samples.d_last[i] / samples.usual_km[i]
        out[i, :, 11] = out[i, :, 4] * np.log1p(samples.gap_hours[i])
    return out


def fit_conditional_logit(
    features: np.ndarray, samples: NewPlaceSamples, columns: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights of ``columns`` (others 0) maximizing the likelihood of each sample's
    target among its unvisited places; features standardized by the fitted samples'
    mean and std. Returns ``(weights, mean, std)``."""
    x = torch.from_numpy(features)
    flat = x.reshape(-1, x.shape[-1])
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    mask = torch.tensor([name in columns for name in FEATURES], dtype=torch.float32)
    weights = torch.zeros(len(FEATURES), requires_grad=True)
    visited, target = torch.from_numpy(samples.visited), torch.from_numpy(samples.target)
    optimizer = torch.optim.LBFGS([weights], max_iter=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scores = (x @ (weights * mask)).masked_fill(visited, -1e9)
        loss = torch.nn.functional.cross_entropy(scores, target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return (weights * mask).detach().numpy(), mean.numpy(), std.numpy()


def logit_scores(
    features: np.ndarray, weights: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """``(n, L)`` scores of a fitted conditional logit."""
    return ((features - mean) / std) @ weights


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in CSV (default: the synthetic city)")
    ap.add_argument("--samples", type=int, default=3000, help="training samples to fit on")
    ap.add_argument("--test", action="store_true", help="also rank the test split")
    ap.add_argument(
        "--late-half",
        action="store_true",
        help="fit on training samples from the later half of each user's training range",
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    dataset, _ = load_dataset(a.data) if a.data else load_dataset()
    visitors, checkins = training_popularity(dataset)
    train = new_place_samples(dataset, "train", a.samples, a.seed, late_half=a.late_half)
    fitted = fit_weights(train, visitors, checkins)
    rankings = {
        "distance from the last place": dict(a=0, c=0, b1=1, b2=0, eps=0.05),
        "popularity (visitors)": dict(a=1, c=0, b1=0, b2=0, eps=0.05),
        "gravity, fitted on train": fitted,
    }
    splits = ["validation"] + (["test"] if a.test else [])
    evaluated = {s: new_place_samples(dataset, s) for s in splits}
    for name, weights in rankings.items():
        record: dict = {"ranking": name, "weights": weights}
        for split, samples in [("train", train), *evaluated.items()]:
            scores = gravity_scores(samples, visitors, checkins, **weights)
            record[split] = new_place_metrics(scores, samples)
        print(json.dumps(record), flush=True)
    torch.manual_seed(a.seed)
    counts = population_counts(dataset)
    features = {"train": ranking_features(train, dataset, counts)}
    features.update({s: ranking_features(evaluated[s], dataset, counts) for s in splits})
    for name, columns in FEATURE_SETS.items():
        weights, mean, std = fit_conditional_logit(features["train"], train, columns)
        record = {
            "ranking": f"conditional logit: {name}",
            "weights": {f: round(float(w), 3) for f, w in zip(FEATURES, weights, strict=True) if w},
        }
        for split, samples in [("train", train), *evaluated.items()]:
            scores = logit_scores(features[split], weights, mean, std)
            record[split] = new_place_metrics(scores, samples)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
