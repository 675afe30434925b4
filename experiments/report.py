"""The report of an experiment: per-run CSV, summary CSV, Markdown table, plots.

Reads the run directories :mod:`experiments.run` wrote under ``OUT/<config>/`` and
writes, in that folder:

* ``runs.csv``: one row per finished run (method, sweep value, seed, test metrics, round
  time, failures...);
* ``summary.csv`` and ``table.md``: mean ± std over seeds per method (and sweep value);
* plots (:mod:`experiments.plots`), also copied to ``--figures`` when given.

    python -m experiments.run experiments/configs/nyc_main.toml --report-only
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from experiments.config import ExperimentConfig
from experiments.run import PlannedRun, plan

METRICS = ("acc@1", "acc@5", "acc@10", "mrr", "ndcg@10")
BREAKDOWN = (
    "return-acc@1",
    "return-acc@10",
    "return-mrr",
    "new-acc@1",
    "new-acc@10",
    "new-mrr",
    "new-samples",
)
"""Return and new-place metrics in the rows (docs/metrics.md); NaN for runs made before
the metrics existed."""


def run_row(run: PlannedRun) -> dict[str, Any]:
    """One finished run as a flat row."""
    result = json.loads(run.result_file.read_text(encoding="utf-8"))
    test = result["test"]
    row: dict[str, Any] = {
        "method": run.method.name,
        "label": run.method.label,
        "kind": run.method.kind,
        "variant": run.variant,
        "seed": run.seed,
        **{m: float(test[m]) for m in METRICS},
        "samples": int(test.get("samples", 0)),
        **{m: float(test.get(m, float("nan"))) for m in BREAKDOWN},
    }
    timings = result.get("timings_s") or {}
    rounds = timings.get("rounds") or []
    row["round_s"] = float(np.mean(rounds)) if rounds else float("nan")
    row["total_s"] = float(timings.get("total", timings.get("train_s", float("nan"))))
    history = result.get("rounds") or []
    row["failures"] = int(sum(int(r.get("failures") or 0) for r in history))
    row["rejected"] = int(sum(int(r.get("rejected") or 0) for r in history))
    return row


def collect(config: ExperimentConfig, out_root: Path) -> list[dict[str, Any]]:
    """Rows of every finished run of the config."""
    return [run_row(r) for r in plan(config, out_root) if r.done]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds per (method, variant), in the
    order methods first appear."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["variant"]), []).append(row)
    summary = []
    for (method, variant), members in groups.items():
        entry: dict[str, Any] = {
            "method": method,
            "label": members[0]["label"],
            "variant": variant,
            "seeds": len(members),
        }
        for key in (*METRICS, *BREAKDOWN, "round_s"):
            values = np.asarray([m.get(key, np.nan) for m in members], dtype=float)
            entry[key] = float(np.mean(values))
            entry[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown_table(summary: list[dict[str, Any]], title: str) -> str:
    """Mean ± std per metric (best mean per column in bold, per sweep value)."""
    best: dict[tuple[str, str], float] = {}
    for entry in summary:
        for key in METRICS:
            slot = (entry["variant"], key)
            best[slot] = max(best.get(slot, -1.0), entry[key])
    has_variant = any(e["variant"] for e in summary)
    head = ["method", *(["setting"] if has_variant else []), "seeds", *METRICS, "round (s)"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in summary:
        cells = [entry["label"]]
        if has_variant:
            cells.append(entry["variant"])
        cells.append(str(entry["seeds"]))
        for key in METRICS:
            text = f"{entry[key]:.4f} ± {entry[f'{key}_std']:.4f}"
            if entry[key] == best[(entry["variant"], key)]:
                text = f"**{text}**"
            cells.append(text)
        round_s = entry["round_s"]
        cells.append("–" if np.isnan(round_s) else f"{round_s:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def breakdown_table(summary: list[dict[str, Any]]) -> str:
    """Mean ± std of the return and new-place metrics ("" when no run has them)."""
    entries = [e for e in summary if not np.isnan(e["new-samples"])]
    if not entries:
        return ""
    has_variant = any(e["variant"] for e in summary)
    head = [
        "method",
        *(["setting"] if has_variant else []),
        "return acc@1",
        "return acc@10",
        "return mrr",
        "new-place acc@1",
        "new-place acc@10",
        "new-place mrr",
        "new-place samples",
    ]
    lines = [
        "**Return and new-place targets** (a new place is ranked among the places its user "
        "had not visited; docs/metrics.md)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for entry in entries:
        cells = [entry["label"], *([entry["variant"]] if has_variant else [])]
        for key in BREAKDOWN[:-1]:
            cells.append(f"{entry[key]:.4f} ± {entry[f'{key}_std']:.4f}")
        cells.append(f"{entry['new-samples']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_curve_table(config: ExperimentConfig, out_root: Path) -> str:
    """Test Acc@1 and MRR of every client by round, mean ± std over seeds, for the runs
    with a test curve (``test-every``); "" when none has one."""
    from experiments.plots import curve_points

    curves = curve_points([r for r in plan(config, out_root) if r.done], "test_curve")
    if not curves:
        return ""
    rounds = sorted({r for by_round in curves.values() for r in by_round})
    lines = [
        "**Test Acc@1 / MRR of every client by round** (mean ± std over seeds)",
        "",
        "| method | " + " | ".join(f"round {r}" for r in rounds) + " |",
        "|" + "---|" * (len(rounds) + 1),
    ]
    for label, by_round in curves.items():
        cells = [label]
        for r in rounds:
            if r not in by_round:
                cells.append("–")
                continue
            a = [float(p["acc@1"]) for p in by_round[r]]
            m = [float(p["mrr"]) for p in by_round[r]]
            std = float(np.std(a, ddof=1)) if len(a) > 1 else 0.0
            cells.append(f"{np.mean(a):.4f} ± {std:.4f} / {np.mean(m):.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_report(config: ExperimentConfig, out_root: Path, figures: Path | None = None) -> str:
    """Write runs.csv, summary.csv, table.md and the plots; return the table."""
    from experiments import plots

    folder = out_root / config.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = collect(config, out_root)
    summary = summarize(rows)
    _write_csv(folder / "runs.csv", rows)
    _write_csv(folder / "summary.csv", summary)
    table = markdown_table(summary, config.title)
    breakdown = breakdown_table(summary)
    if breakdown:
        table += "\n" + breakdown
    curves = test_curve_table(config, out_root)
    if curves:
        table += "\n" + curves
    (folder / "table.md").write_text(table, encoding="utf-8")
    made = plots.make_plots(config, out_root, folder, rows)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        for path in made:
            shutil.copy2(path, figures / path.name)
    return table
