"""Where :func:`fedgeo.training.evaluate` spends its time, part by part.

``evaluate`` ranks each sample among all places (the headline metrics) and each
new-place target again among the places its user had not visited (the new-place
metrics). This script times, on the same batches, each part of one evaluation: building
the features, the model's forward pass, the overall ranking, the per-sample visited mask
and the second ranking of the new-place rows; and, beside them, the second ranking as it
was before (every row ranked again, returns included). Two batchings are timed:
the whole split in batches of 512 (the centralized trainer) and one batch per user (what
each client does in a federation).

    python benchmarks/evaluate_cost.py --data ../shared/data/foursquare-nyc/checkins.csv
    python benchmarks/evaluate_cost.py            # the synthetic city
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.data.readers import FORMATS  # noqa: E402
from fedgeo.geo.prior import AdjacencyPrior, PriorConfig  # noqa: E402
from fedgeo.metrics import rank_new_places, ranks_from_scores  # noqa: E402
from fedgeo.models import ModelConfig, SampleIndex, build_model  # noqa: E402
from fedgeo.training import _visited  # noqa: E402

PARTS = ("features", "forward", "rank all places", "visited mask", "rank new places")
BEFORE = "rank every row again (the earlier way)"


def rank_every_row_again(scores, targets: np.ndarray, visited: np.ndarray) -> np.ndarray:
    """The second ranking as ``evaluate`` did it before: every row, returns too."""
    exclude = np.array(visited, dtype=bool)
    exclude[exclude[np.arange(len(targets)), targets]] = False
    return ranks_from_scores(scores, targets, exclude=exclude)


def time_parts(model, features, index, batches) -> dict[str, float]:
    """Seconds spent in each part of ``evaluate`` over ``batches`` of (users, positions)."""
    spent: dict[str, float] = defaultdict(float)
    model.eval()
    with torch.no_grad():
        for users, positions in batches:
            t0 = time.perf_counter()
            batch = features.build(index, users, positions)
            t1 = time.perf_counter()
            scores = model(batch)
            t2 = time.perf_counter()
            ranks = ranks_from_scores(scores, batch["target"])
            t3 = time.perf_counter()
            visited = _visited(index, users, positions, features.num_places)
            t4 = time.perf_counter()
            rank_new_places(scores, batch["target"].numpy(), visited, ranks=ranks)
            t5 = time.perf_counter()
            before = rank_every_row_again(scores, batch["target"].numpy(), visited)
            t6 = time.perf_counter()
            np.testing.assert_array_equal(
                before, rank_new_places(scores, batch["target"].numpy(), visited)[1]
            )
            laps = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
            for part, seconds in zip((*PARTS, BEFORE), laps, strict=True):
                spent[part] += seconds
    return dict(spent)


def batchings(index: SampleIndex, split: str) -> dict[str, list]:
    users, positions = index.samples(split)
    whole = [(users[s : s + 512], positions[s : s + 512]) for s in range(0, len(users), 512)]
    per_user = [(users[users == u], positions[users == u]) for u in np.unique(users)]
    return {"batches of 512": whole, "one batch per user": per_user}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="check-in file (default: the synthetic city)")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="--data's format")
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset, _ = load_dataset(args.data, args.format) if args.data else load_dataset()
    config = ModelConfig()
    prior = AdjacencyPrior.from_places(dataset.places, PriorConfig())
    model, features = build_model(
        dataset.num_places,
        len(dataset.users),
        config,
        prior,
        seed=0,
        coordinates=dataset.places.coordinates(),
    )
    index = SampleIndex(dataset.users)
    print(
        f"{dataset.name}: {len(dataset.users)} users, {dataset.num_places} places, "
        f"{len(index.samples(args.split)[0])} {args.split} samples; torch threads "
        f"{args.threads}; best of {args.repeats} passes"
    )
    for name, batches in batchings(index, args.split).items():
        best = min(
            (time_parts(model, features, index, batches) for _ in range(args.repeats)),
            key=lambda spent: sum(spent[part] for part in PARTS),
        )
        total = sum(best[part] for part in PARTS)
        print(f"\n{name} ({len(batches)} batches): {total:.3f} s in all")
        for part in PARTS:
            print(f"  {part:<16} {best[part]:8.3f} s  {100 * best[part] / total:5.1f} %")
        second = best["visited mask"] + best["rank new places"]
        print(f"  second ranking (mask + rank): {100 * second / total:.1f} % of the evaluation")
        print(
            f"  [{BEFORE}: {best[BEFORE]:.3f} s, "
            f"{best[BEFORE] / best['rank new places']:.1f} x the new-place rows only]"
        )


if __name__ == "__main__":
    main()
