"""Why the return score: fit the memory gates alone by cross-entropy, with and without it.

The model with every learned part but the gate biases switched off scores each place by
``sum_f softplus(b_f) * M_f[l]`` (+ ``c * 1[freq[l] > 0]`` with the return score). This
script fits ``b`` (and ``c``) by cross-entropy (L-BFGS) on a seeded sample of training
samples and prints validation and test Acc@1 / MRR next to the untrained gates
(``b_f = 1``), so one sees that the likelihood's optimum ranks worse than the untrained
gates without the return score and better with it (docs/model.md, *Return score*).

    python experiments/return_score_fit.py --data ../shared/data/foursquare-nyc/checkins.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.models import ModelConfig, SampleIndex, build_model  # noqa: E402
from fedgeo.models.features import FREQ, MEMORY_FEATURES  # noqa: E402


def scores(memory: torch.Tensor, bias: torch.Tensor, ret: torch.Tensor | None) -> torch.Tensor:
    """Memory-only scores with gate biases ``bias`` and return boost ``ret``."""
    out = torch.einsum("f,bfl->bl", nn.functional.softplus(bias), memory)
    if ret is not None:
        out = out + ret * (memory[:, FREQ] > 0).to(out.dtype)
    return out


def metrics(memory, target, bias, ret) -> str:
    s = scores(memory, bias, ret)
    rank = (s > s.gather(1, target[:, None])).sum(1) + 1
    return f"Acc@1 {(rank == 1).float().mean():.4f} MRR {(1 / rank.float()).mean():.4f}"


def fit(memory, target, with_return: bool):
    """Gate biases (and return boost) minimizing cross-entropy, by L-BFGS."""
    bias = torch.ones(len(MEMORY_FEATURES), requires_grad=True)
    ret = torch.zeros((), requires_grad=True) if with_return else None
    params = [bias] + ([ret] if ret is not None else [])
    opt = torch.optim.LBFGS(params, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(scores(memory, bias, ret), target)
        loss.backward()
        return loss

    opt.step(closure)
    return bias.detach(), (ret.detach() if ret is not None else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in CSV (default: the synthetic city)")
    ap.add_argument("--samples", type=int, default=6000, help="training samples to fit on")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    dataset, _ = load_dataset(a.data) if a.data else load_dataset()
    _, features = build_model(
        dataset.num_places,
        1,
        ModelConfig().without_prior(),
        seed=0,
        coordinates=dataset.places.coordinates(),
    )
    index = SampleIndex(dataset.users)

    def split(name: str, limit: int = 0):
        users, positions = index.samples(name)
        if limit and len(users) > limit:
            pick = np.random.default_rng(a.seed).choice(len(users), limit, replace=False)
            users, positions = users[pick], positions[pick]
        batch = features.build(index, users, positions)
        return batch["memory"], batch["target"]

    evals = {name: split(name) for name in ("validation", "test")}
    train = split("train", a.samples)

    def report(label: str, bias: torch.Tensor, ret: torch.Tensor | None) -> None:
        parts = [f"{name} {metrics(*evals[name], bias, ret)}" for name in evals]
        gates = nn.functional.softplus(bias).numpy().round(3).tolist()
        extra = f", return {float(ret):.3f}" if ret is not None else ""
        print(f"{label}: gates {gates}{extra} | " + " | ".join(parts), flush=True)

    for name, (memory, target) in evals.items():
        new = (memory[:, FREQ].gather(1, target[:, None]) == 0).float().mean()
        print(f"{name}: {float(new):.1%} of the targets are places the user never visited")
    with torch.no_grad():
        report("untrained gates", torch.ones(len(MEMORY_FEATURES)), None)
    for with_return in (False, True):
        bias, ret = fit(*train, with_return)
        with torch.no_grad():
            report(f"fitted, return score {'on' if with_return else 'off'}", bias, ret)


if __name__ == "__main__":
    main()
