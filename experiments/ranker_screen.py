"""How far a nonlinear ranker over per-candidate features goes, apart from any network.

The model's scores are sums of per-place features, each weighted by a context gate. This
screen asks what a ranker that may combine the features nonlinearly (gradient-boosted
trees, scikit-learn's ``HistGradientBoostingClassifier``) gets from the same inputs, and
from richer ones computed from the user's own past only:

* the model's per-place feature maps (personal memory, return indicator, geographic prior
  row, the population prior's counts of other users), the untrained model's score;
* the sample's context (history length, gap, hour of day, weekday);
* per candidate, from the user's own history before the sample: visits on the same
  weekday, visits within two hours of the same time of day, hours and check-ins since the
  latest visit, second-order transitions (from the last two places), the share of all
  visits, whether it is the last place, and the distance (km) from the last place and
  from the centre of the user's places.

A sample's candidates are the places its user visited before it plus the 30 unvisited
places the untrained model ranks highest; the trees are fit on training samples (target
1 for the next place) and rank the candidates, every other place ranks below them in the
untrained model's order. Ranked on validation (test only with ``--test``); ranks count
ties pessimistically.

    python experiments/ranker_screen.py --data ../shared/data/foursquare-nyc/checkins.csv

A diagnosis (docs/model.md, "Why training added little"): it bounds what re-ranking the
model's own inputs, and a few richer personal features, can add.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.feature_screen import NAMES, feature_maps, screen_inputs  # noqa: E402
from fedgeo.models import SampleIndex  # noqa: E402
from fedgeo.models.features import haversine_km  # noqa: E402

UNTRAINED = np.array([1.31] * 4 + [4.0, 0.69] + [0.0] * 4)
"""The untrained model's weights of the maps in ``NAMES`` (memory gates, return boost,
prior gate; the population gates start at zero)."""
NEW_CANDIDATES = 30

MODEL_FEATURES = [*NAMES, "untrained score"]
CONTEXT_FEATURES = ["log history", "log gap h", "hour", "weekday"]
HISTORY_FEATURES = [
    "same weekday", "same time of day", "log hours since", "log check-ins since",
    "second-order trans", "visit share", "is last", "km from last", "km from centre",
]  # fmt: skip
FEATURE_SETS = {
    "model's maps": MODEL_FEATURES,
    "model's maps + context": MODEL_FEATURES + CONTEXT_FEATURES,
    "model's maps + context + own history": MODEL_FEATURES + CONTEXT_FEATURES + HISTORY_FEATURES,
}


def candidate_rows(dataset, index, users, positions, maps, targets):
    """Per sample: candidate places, their feature rows, and the untrained rank order."""
    radians = np.radians(dataset.places.coordinates())
    scores = np.einsum("f,bfl->bl", UNTRAINED, maps)
    out = []
    for b, (u, p) in enumerate(zip(users.tolist(), positions.tolist(), strict=True)):
        start = index.offsets[u]
        past = index.places[start : start + p]
        times = index.times[start : start + p + 1]
        how = index.hour_of_week[start : start + p + 1]
        seen = np.unique(past)
        new_order = np.argsort(-scores[b], kind="stable")
        new = new_order[~np.isin(new_order, seen)][:NEW_CANDIDATES]
        cand = np.concatenate([seen, new])
        last = past[-1]
        hod, dow = how[-1] % 24, how[-1] // 24
        past_hod, past_dow = how[:-1] % 24, how[:-1] // 24
        hod_diff = np.minimum(np.abs(past_hod - hod), 24 - np.abs(past_hod - hod))
        # latest visit of each candidate (index in the past), -1 if never
        latest = np.full(len(cand), -1)
        pos_of = {pl: i for i, pl in enumerate(cand.tolist())}
        for j, pl in enumerate(past.tolist()):
            latest[pos_of[pl]] = j
        same_dow = np.array([np.sum((past == c) & (past_dow == dow)) for c in cand])
        same_hod = np.array([np.sum((past == c) & (hod_diff <= 2)) for c in cand])
        freq = np.array([np.sum(past == c) for c in cand])
        hours_since = np.where(latest >= 0, (times[-1] - times[np.maximum(latest, 0)]) / 3600, 1e5)
        checks_since = np.where(latest >= 0, p - latest, 1e5)
        if p >= 2:
            prev2 = (past[:-2] == past[-2]) & (past[1:-1] == last)
            nxt = past[2:][prev2]
            trans2 = np.array([np.sum(nxt == c) for c in cand])
        else:
            trans2 = np.zeros(len(cand))
        centre = radians[seen].mean(axis=0)
        rows = np.column_stack(
            [
                maps[b][:, cand].T,
                scores[b][cand],
                np.full(len(cand), np.log1p(p)),
                np.full(len(cand), np.log1p(max(times[-1] - times[-2], 0) / 3600)),
                np.full(len(cand), hod),
                np.full(len(cand), dow),
                same_dow,
                same_hod,
                np.log1p(np.maximum(hours_since, 0)),
                np.log1p(checks_since),
                trans2,
                freq / p,
                (cand == last).astype(float),
                haversine_km(radians[last], radians[cand]),
                haversine_km(centre, radians[cand]),
            ]
        )
        out.append((cand, rows, new_order, int(targets[b]), seen))
    return out


def summary(samples, score) -> str:
    """Acc@1, MRR and return MRR when ``score(rows)`` ranks each sample's candidates;
    a target outside them ranks below every candidate, in the untrained order."""
    rr, ret_rr, acc1 = [], [], []
    for cand, rows, order, target, seen in samples:
        if target in cand:
            s = score(rows)
            rank = int(np.sum(s >= s[cand.tolist().index(target)]))
        else:
            rest = order[~np.isin(order, cand)]
            rank = len(cand) + int(np.flatnonzero(rest == target)[0]) + 1
        rr.append(1 / rank)
        acc1.append(rank == 1)
        if target in seen:
            ret_rr.append(1 / rank)
    return f"Acc@1 {np.mean(acc1):.4f} MRR {np.mean(rr):.4f} | return MRR {np.mean(ret_rr):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in CSV (default: the synthetic city)")
    ap.add_argument("--samples", type=int, default=8000, help="training samples to fit on")
    ap.add_argument("--test", action="store_true", help="also print the test split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--drop-one", action="store_true", help="also fit the full set without each history feature"
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    dataset, builder = screen_inputs(a.data, a.seed)
    index = SampleIndex(dataset.users)

    def split(name: str, limit: int = 0):
        users, positions = index.samples(name)
        if limit and len(users) > limit:
            pick = np.random.default_rng(a.seed).choice(len(users), limit, replace=False)
            users, positions = users[np.sort(pick)], positions[np.sort(pick)]
        rows = []
        for lo in range(0, len(users), 500):
            part_users, part_positions = users[lo : lo + 500], positions[lo : lo + 500]
            maps, target = feature_maps(builder, index, part_users, part_positions)
            rows += candidate_rows(
                dataset, index, part_users, part_positions,
                maps.numpy().astype(np.float64), target.numpy(),
            )  # fmt: skip
        return rows

    train = split("train", a.samples)
    evals = {"validation": split("validation")}
    if a.test:
        evals["test"] = split("test")
    print(f"features built in {time.perf_counter() - started:.0f} s", flush=True)
    for name, samples in evals.items():
        untrained = summary(samples, lambda rows: rows[:, MODEL_FEATURES.index("untrained score")])
        print(f"untrained model's scores | {name} {untrained}", flush=True)
    x = np.concatenate([rows for _, rows, _, _, _ in train])
    y = np.concatenate([(cand == target).astype(int) for cand, _, _, target, _ in train])
    all_features = MODEL_FEATURES + CONTEXT_FEATURES + HISTORY_FEATURES
    sets = dict(FEATURE_SETS)
    if a.drop_one:
        full = FEATURE_SETS["model's maps + context + own history"]
        sets |= {f"... without {f}": [n for n in full if n != f] for f in HISTORY_FEATURES}
    for label, names in sets.items():
        columns = [all_features.index(n) for n in names]
        model = HistGradientBoostingClassifier(
            max_iter=300, learning_rate=0.05, max_leaf_nodes=31, random_state=a.seed
        ).fit(x[:, columns], y)

        def score(rows, model=model, columns=columns):
            return model.predict_proba(rows[:, columns])[:, 1]

        parts = " || ".join(f"{n} {summary(s, score)}" for n, s in evals.items())
        print(f"{label} | {parts}", flush=True)


if __name__ == "__main__":
    main()
