"""What each score family is worth: fit only the weights of a set of per-place scores.

Every sample gets per-place feature maps: the personal memory (freq, trans, slot,
recency), the return indicator, the geographic prior row (new places), and the population
prior's counts of *other* users (transitions out of the last place, visitors), each split
into visited and new places. A conditional-logit model ``s_l = sum_f w_f X_f[l]`` is fit
by cross-entropy (L-BFGS) on a seeded sample of training samples, once per feature set,
and ranked on validation (test only with ``--test``). Ranks count ties pessimistically.

    python experiments/feature_screen.py --data ../shared/data/foursquare-nyc/checkins.csv

This is a diagnosis (docs/model.md, "Why pooled training added little"): it shows how
much a family can add when only its weights are learned, apart from any network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgeo.centralized import build_population  # noqa: E402
from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.geo.prior import AdjacencyPrior, PriorConfig  # noqa: E402
from fedgeo.models import ModelConfig, SampleIndex, build_model  # noqa: E402
from fedgeo.models.features import FREQ  # noqa: E402
from fedgeo.population import PopulationConfig  # noqa: E402

NAMES = (
    "freq", "trans", "slot", "recency", "return", "prior-new",
    "pop-trans-visited", "pop-trans-new", "pop-visitors-visited", "pop-visitors-new",
)  # fmt: skip
FEATURE_SETS = {
    "memory + return": NAMES[:5],
    "memory + return + geographic prior": NAMES[:6],
    "memory + return + population transitions": NAMES[:5] + NAMES[6:8],
    "memory + return + population visitors": NAMES[:5] + NAMES[8:10],
    "memory + return + population (both)": NAMES[:5] + NAMES[6:],
    "all": NAMES,
}


def feature_maps(builder, index, users, positions) -> tuple[torch.Tensor, torch.Tensor]:
    batch = builder.build(index, users, positions)
    memory, population = batch["memory"], batch["population"]
    seen = (memory[:, FREQ] > 0).float()
    maps = [memory[:, i] for i in range(memory.shape[1])]
    maps += [seen, batch["prior_row"] * (1 - seen)]
    maps += [population[:, i] for i in range(population.shape[1])]
    return torch.stack(maps, 1), batch["target"]


def ranks(x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, mask=None):
    scores = torch.einsum("f,bfl->bl", weights, x)
    if mask is not None:
        scores = scores.masked_fill(mask, -1e9)
    return (scores >= scores.gather(1, target[:, None])).sum(1)


def summary(x, target, weights) -> str:
    seen = x[:, NAMES.index("return")] > 0
    is_new = ~seen.gather(1, target[:, None]).squeeze(1)
    r = ranks(x, target, weights)
    rn = ranks(x, target, weights, mask=seen)[is_new]
    return (
        f"Acc@1 {(r == 1).float().mean():.4f} MRR {(1 / r.float()).mean():.4f} | "
        f"return MRR {(1 / r[~is_new].float()).mean():.4f} | "
        f"new Acc@10 {(rn <= 10).float().mean():.4f} MRR {(1 / rn.float()).mean():.4f}"
    )


def fit(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = torch.zeros(len(NAMES))
    weights[:4], weights[4] = 1.31, 4.0  # the untrained model's memory gates and return boost
    weights.requires_grad_(True)
    opt = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        scores = torch.einsum("f,bfl->bl", weights * mask, x)
        loss = nn.functional.cross_entropy(scores, target)
        loss.backward()
        return loss

    opt.step(closure)
    return (weights * mask).detach()


def screen_inputs(data: str | None, seed: int):
    """The data set (``data``, or the synthetic city) and a feature builder of the memory
    model with the geographic prior's row and the population prior (seeded build)."""
    dataset, _ = load_dataset(data) if data else load_dataset()
    prior = AdjacencyPrior.from_places(dataset.places, PriorConfig(k=10))
    config = ModelConfig(prior_propagation=False, population_prior=True)
    population = build_population(dataset, PopulationConfig(), seed=seed)
    _, builder = build_model(
        dataset.num_places, len(dataset.users), config, prior, population=population
    )
    return dataset, builder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in CSV (default: the synthetic city)")
    ap.add_argument("--samples", type=int, default=6000, help="training samples to fit on")
    ap.add_argument(
        "--last-only",
        action="store_true",
        help="fit on the last check-in of each training trajectory only (like evaluation)",
    )
    ap.add_argument("--test", action="store_true", help="also print the test split")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    dataset, builder = screen_inputs(a.data, a.seed)
    index = SampleIndex(dataset.users)

    def split(name: str, limit: int = 0, last_only: bool = False):
        users, positions = index.samples(name)
        if last_only:
            keep = [
                p + 1 >= len(dataset.users[u])
                or dataset.users[u].traj_start[p + 1] != dataset.users[u].traj_start[p]
                for u, p in zip(users, positions, strict=True)
            ]
            users, positions = users[np.array(keep)], positions[np.array(keep)]
        if limit and len(users) > limit:
            pick = np.random.default_rng(a.seed).choice(len(users), limit, replace=False)
            users, positions = users[pick], positions[pick]
        return feature_maps(builder, index, users, positions)

    train = split("train", a.samples, a.last_only)
    evals = {"validation": split("validation")}
    if a.test:
        evals["test"] = split("test")
    untrained = torch.tensor([1.31] * 4 + [4.0, 0.69] + [0.0] * 4)
    for name, data in evals.items():
        print(f"untrained model's scores | {name} {summary(*data, untrained)}", flush=True)
    for label, keep in FEATURE_SETS.items():
        mask = torch.tensor([1.0 if n in keep else 0.0 for n in NAMES])
        weights = fit(*train, mask)
        parts = " || ".join(f"{n} {summary(*d, weights)}" for n, d in evals.items())
        print(f"{label} | {parts}", flush=True)
        print(
            "    weights "
            + ", ".join(f"{n} {w:.3f}" for n, w in zip(NAMES, weights.tolist(), strict=True) if w),
            flush=True,
        )


if __name__ == "__main__":
    main()
