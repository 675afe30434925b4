"""How well can new places be ranked from public coordinates and population popularity?

A new-place target is a place its user had not visited before (docs/metrics.md); it is
ranked among the places the user had not visited. This screen scores every such place by
a gravity model, with no network:

``s_l = a log(1 + visitors_l) + c log(1 + checkins_l) - b1 log(d(last, l) + eps)
- b2 log(d(centroid, l) + eps)``

``visitors_l`` and ``checkins_l`` count the users and check-ins at ``l`` in every
user's training prefix (the population prior's secure sum holds the visitors, capped per
user; the check-ins would take one more such sum),
``d(last, l)`` is the great-circle distance from the user's last place, and
``d(centroid, l)`` the distance from the centre of the places the user had visited. The
weights are chosen on the training split's new-place samples (a grid, best new-place
Acc@10) and ranked on validation (test only with ``--test``). One JSON line per ranking::

    python experiments/newplace_screen.py --data ../shared/data/foursquare-nyc/checkins.csv
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics.pairwise import haversine_distances

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgeo.data.dataset import Dataset  # noqa: E402
from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.data.stats import EARTH_RADIUS_KM  # noqa: E402

GRID = {
    "a": (0.0, 0.5, 1.0, 1.5, 2.0),
    "c": (0.0, 0.5, 1.0),
    "b1": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    "b2": (0.0, 0.5, 1.0, 2.0),
    "eps": (0.05, 0.3),
}
"""Weights searched on the training split (distances in km)."""


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


def new_place_samples(
    dataset: Dataset, split: str, limit: int = 0, seed: int = 0
) -> NewPlaceSamples:
    """Every sample of ``split`` whose target its user had not visited before
    (``limit``: a seeded random subset of at most that many)."""
    picks = [
        (u, int(p))
        for u, user in enumerate(dataset.users)
        for p in user.split(split)
        if p > 0 and user.places[p] not in user.places[:p]
    ]
    if limit and len(picks) > limit:
        chosen = np.random.default_rng(seed).choice(len(picks), limit, replace=False)
        picks = [picks[i] for i in sorted(chosen)]
    coords = np.radians(dataset.places.coordinates())
    n, num_places = len(picks), dataset.num_places
    last = np.empty((n, 2))
    centroid = np.empty((n, 2))
    visited = np.zeros((n, num_places), dtype=bool)
    target = np.empty(n, dtype=np.int64)
    for i, (u, p) in enumerate(picks):
        places = dataset.users[u].places
        seen = np.unique(places[:p])
        last[i], centroid[i] = coords[places[p - 1]], coords[seen].mean(0)
        visited[i, seen] = True
        target[i] = places[p]
    return NewPlaceSamples(
        d_last=haversine_distances(last, coords) * EARTH_RADIUS_KM,
        d_centroid=haversine_distances(centroid, coords) * EARTH_RADIUS_KM,
        visited=visited,
        target=target,
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in CSV (default: the synthetic city)")
    ap.add_argument("--samples", type=int, default=3000, help="training samples to fit on")
    ap.add_argument("--test", action="store_true", help="also rank the test split")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    dataset, _ = load_dataset(a.data) if a.data else load_dataset()
    visitors, checkins = training_popularity(dataset)
    train = new_place_samples(dataset, "train", a.samples, a.seed)
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


if __name__ == "__main__":
    main()
