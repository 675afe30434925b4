"""Validation screens for the no-memory regime: reference rankings and pooled training.

Two commands, each printing one JSON line per result (validation split only; designs are
screened on validation, never on test):

``references`` ranks every validation target with two rankings that need no training:
the places' popularity (how often each place is a training target) and a copy of the
recent window (places in the last ``W`` check-ins by how often, then how recently, they
were visited there; then popularity)::

    python experiments/nomemory_screen.py --data ../shared/data/foursquare-nyc/checkins.csv \\
        references --window 8 20

``pooled`` trains the model without on-device memory and without the geographic prior on
all users' data pooled, one epoch at a time, and prints validation metrics after each::

    python experiments/nomemory_screen.py --data ../shared/data/foursquare-nyc/checkins.csv \\
        pooled --epochs 3 --set window_pointer=true

The federated counterparts are ``experiments/design_sweep.py --set personal_memory=false``
runs (docs/model.md, *Why federated training without memory learned nothing*).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.design_sweep import model_options  # noqa: E402
from fedgeo.data.dataset import Dataset  # noqa: E402
from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.metrics import MetricSums  # noqa: E402
from fedgeo.models import ModelConfig, SampleIndex, build_model  # noqa: E402
from fedgeo.training import TrainConfig, evaluate, train_local  # noqa: E402

METRICS = ("acc@1", "acc@10", "mrr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in CSV (default: the synthetic city)")
    sub = ap.add_subparsers(dest="command", required=True)
    refs = sub.add_parser("references", help="popularity and window-copy rankings")
    refs.add_argument("--window", type=int, nargs="+", default=[20], help="window sizes W")
    pooled = sub.add_parser("pooled", help="pooled training, validation after each epoch")
    pooled.add_argument("--epochs", type=int, default=3)
    pooled.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    pooled.add_argument("--lr", type=float, default=2e-3)
    pooled.add_argument("--batch-size", type=int, default=256)
    pooled.add_argument("--seed", type=int, default=0)
    pooled.add_argument("--threads", type=int, default=1)
    pooled.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a model option (fedgeo.models.ModelConfig field), e.g. window_pointer=true",
    )
    return ap.parse_args(argv)


def target_counts(index: SampleIndex, num_places: int) -> np.ndarray:
    """How often each place is a training target."""
    users, positions = index.samples("train")
    targets = index.places[index.offsets[users] + positions]
    return np.bincount(targets, minlength=num_places).astype(np.float64)


def validation_targets(index: SampleIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each validation sample's start offset, position and target place."""
    users, positions = index.samples("validation")
    starts = index.offsets[users]
    return starts, positions, index.places[starts + positions]


def popularity_ranks(index: SampleIndex, popularity: np.ndarray) -> np.ndarray:
    """1-based ranks of the validation targets by popularity (places tied with the
    target count as ranked below it)."""
    _, _, targets = validation_targets(index)
    ordered = np.sort(popularity)
    return 1 + len(ordered) - np.searchsorted(ordered, popularity[targets], side="right")


def window_copy_ranks(index: SampleIndex, popularity: np.ndarray, window: int) -> np.ndarray:
    """1-based ranks of the validation targets by the window copy: visits in the last
    ``window`` check-ins, then recency (later check-ins weigh 0.01 more), then popularity
    (places tied with the target count as ranked below it)."""
    by_popularity = popularity / (popularity.max() + 1.0) * 1e-3
    ranks = []
    for start, p, target in zip(*validation_targets(index), strict=True):
        score = by_popularity.copy()
        for position, place in enumerate(index.places[max(start, start + p - window) : start + p]):
            score[place] += 1.0 + 0.01 * position
        ranks.append(1 + int((score > score[target]).sum()))
    return np.asarray(ranks)


def summary(ranks: np.ndarray) -> dict[str, float]:
    values = MetricSums.from_ranks(ranks).finalize()
    return {k: round(values[k], 4) for k in METRICS}


def references(dataset: Dataset, windows: list[int]) -> None:
    index = SampleIndex(dataset.users)
    popularity = target_counts(index, dataset.num_places)
    rankings = {"popularity": popularity_ranks(index, popularity)}
    for window in windows:
        rankings[f"window-copy W={window}"] = window_copy_ranks(index, popularity, window)
    for name, ranks in rankings.items():
        print(json.dumps({"ranking": name, "validation": summary(ranks)}), flush=True)


def pooled(dataset: Dataset, a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    options = {"personal_memory": False, **model_options(a.set)}
    config = ModelConfig(**options).without_prior()
    model, features = build_model(
        dataset.num_places,
        len(dataset.users),
        config,
        seed=a.seed,
        coordinates=dataset.places.coordinates(),
    )
    index = SampleIndex(dataset.users)
    started = time.time()
    for epoch in range(1, a.epochs + 1):
        cfg = TrainConfig(
            epochs=1,
            batch_size=a.batch_size,
            lr=a.lr,
            optimizer=a.optimizer,
            seed=a.seed * 1000 + epoch - 1,
        )
        train_local(model, features, dataset.users, cfg)
        ranks = evaluate(model, features, index, "validation").ranks
        record = {"epoch": epoch, "options": options, "validation": summary(ranks)}
        record["seconds"] = round(time.time() - started, 1)
        print(json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    dataset, _ = load_dataset(a.data) if a.data else load_dataset()
    if a.command == "references":
        references(dataset, a.window)
    else:
        pooled(dataset, a)


if __name__ == "__main__":
    main()
