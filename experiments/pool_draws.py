"""Pool an experiment's test metrics over several data sets (e.g. draws of
``fedgeo data sparsify``), weighting each by its test samples.

A small data set has too few test samples to rank methods: on a sparse draw of NYC, one
test sample is about 0.009 Acc@1. Running the same config on several draws and pooling
their samples gives the figure a data set of their combined size would give. Each
argument is an experiment's output folder (``OUT/<config>/``, with the ``runs.csv`` that
:mod:`experiments.report` writes); a method's pooled metric for one seed is the
sample-weighted mean over the folders, then the table shows mean ± std over the seeds
that every folder ran:

    python -m experiments.pool_draws runs/sparse-d0/nyc-sparse runs/sparse-d1/nyc-sparse
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

POOLED = ("acc@1", "acc@10", "mrr", "return-mrr", "new-acc@10")
"""Metrics of the pooled table: ``return-*`` weighted by return samples, ``new-*`` by
new-place samples, the others by all test samples."""


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``folder/runs.csv``; a clear error when it is missing."""
    path = Path(folder) / "runs.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no runs.csv (run `python -m experiments.run CONFIG --report-only "
            f"--out ...` for that folder first)"
        )
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for line, row in enumerate(rows, start=2):
        for key in ("method", "seed", "samples", *POOLED):
            if row.get(key) in (None, ""):
                raise ValueError(f"{path}, line {line}: no value for '{key}'")
    return rows


def _weight(row: dict[str, Any], metric: str) -> float:
    samples, new = float(row["samples"]), float(row["new-samples"] or 0)
    if metric.startswith("new-"):
        return new
    if metric.startswith("return-"):
        return samples - new
    return samples


def pool(folders: list[Path]) -> list[dict[str, Any]]:
    """Per method: pooled metrics (mean and std over the common seeds), the seeds, and
    each folder's Acc@1 (mean over those seeds)."""
    by_folder = [read_runs(f) for f in folders]
    methods = list(dict.fromkeys(r["method"] for rows in by_folder for r in rows))
    table = []
    for method in methods:
        runs = [{int(r["seed"]): r for r in rows if r["method"] == method} for rows in by_folder]
        seeds = sorted(set.intersection(*(set(r) for r in runs)))
        if not seeds:
            continue
        per_seed: dict[str, list[float]] = defaultdict(list)
        for seed in seeds:
            for metric in POOLED:
                weights = np.array([_weight(r[seed], metric) for r in runs])
                values = np.array([float(r[seed][metric]) for r in runs])
                keep = weights > 0
                total = weights[keep].sum()
                per_seed[metric].append(
                    float((values[keep] * weights[keep]).sum() / total) if total else math.nan
                )
        table.append(
            {
                "method": method,
                "seeds": seeds,
                "samples": int(sum(float(r[seeds[0]]["samples"]) for r in runs)),
                **{m: (float(np.mean(v)), float(np.std(v))) for m, v in per_seed.items()},
                "by_folder": [float(np.mean([float(r[s]["acc@1"]) for s in seeds])) for r in runs],
            }
        )
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    """The pooled table as Markdown."""
    head = ["method", "seeds", "test samples", *POOLED, "acc@1 by data set"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row["method"], ",".join(map(str, row["seeds"])), str(row["samples"])]
        for metric in POOLED:
            mean, std = row[metric]
            cells.append(f"{mean:.4f} ± {std:.4f}" if len(row["seeds"]) > 1 else f"{mean:.4f}")
        cells.append(" / ".join(f"{v:.4f}" for v in row["by_folder"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.pool_draws", description=__doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="experiment output folders")
    args = parser.parse_args(argv)
    try:
        table = pool(args.folders)
    except (FileNotFoundError, ValueError) as err:
        print(f"pool_draws: error: {err}", file=sys.stderr)
        return 2
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
