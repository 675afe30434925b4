"""Plots of an experiment's runs (matplotlib, written as PNG files).

* ``curves.png``: federated validation Acc@1 against the round, mean ± std over seeds;
* ``test_curves.png``: test Acc@1 of every client against the round, mean ± std over seeds
  (runs with ``test-every``);
* ``client_accuracy.png``: distribution (ECDF) of per-client test Acc@1, first seed;
* ``participation.png``: FedGeo's participation probability against each client's number
  of distinct places (first seed; with a sweep, its last value);
* ``sweep.png``: test Acc@1 against the swept key, mean ± std (configs with a sweep);
* ``methods.png``: test Acc@1 and MRR of every method, mean ± std over seeds (the table
  as a picture).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.config import ExperimentConfig  # noqa: E402
from experiments.report import summarize  # noqa: E402
from experiments.run import PlannedRun, plan, run_values  # noqa: E402


def _done(config: ExperimentConfig, out_root: Path) -> list[PlannedRun]:
    return [r for r in plan(config, out_root) if r.done]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_points(runs: list[PlannedRun], history: str) -> dict[str, dict[int, list[dict]]]:
    """``label -> round -> [point per seed]`` from each federated run's ``history`` list in
    results.json (``evaluation``: validation of sampled clients; ``test_curve``: test of
    every client); a point is the recorded metrics dict."""
    series: dict[str, dict[int, list[dict]]] = {}
    for run in runs:
        if run.method.kind != "federated":
            continue
        result = json.loads(run.result_file.read_text(encoding="utf-8"))
        label = run.method.label + (f" ({run.variant})" if run.variant else "")
        for point in result.get(history) or []:
            series.setdefault(label, {}).setdefault(int(point["round"]), []).append(point)
    return series


def _values(
    series: dict[str, dict[int, list[dict]]], metric: str
) -> dict[str, dict[int, list[float]]]:
    """One metric of every point of ``series``."""
    return {
        label: {r: [float(p[metric]) for p in points] for r, points in by_round.items()}
        for label, by_round in series.items()
    }


def _plot_series(series: dict[str, dict[int, list[float]]], ylabel: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        rounds = sorted(points)
        mean = np.array([np.mean(points[r]) for r in rounds])
        std = np.array([np.std(points[r]) for r in rounds])
        ax.plot(rounds, mean, marker="o", label=label)
        ax.fill_between(rounds, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_curves(runs: list[PlannedRun], path: Path) -> Path | None:
    """Validation Acc@1 per round, one line per federated method (and sweep value)."""
    series = _values(curve_points(runs, "evaluation"), "acc@1")
    return _plot_series(series, "validation Acc@1 (sampled clients)", path) if series else None


def plot_test_curves(runs: list[PlannedRun], path: Path) -> Path | None:
    """Test Acc@1 of every client per round (runs with ``test-every``)."""
    series = _values(curve_points(runs, "test_curve"), "acc@1")
    return _plot_series(series, "test Acc@1 (every client)", path) if series else None


def per_client_accuracy(predictions_csv: Path) -> np.ndarray:
    """Acc@1 of each user with test samples, from a run's predictions.csv."""
    frame = pd.read_csv(predictions_csv)
    return frame.assign(hit=frame["rank"] == 1).groupby("user_id")["hit"].mean().to_numpy()


def plot_client_accuracy(runs: list[PlannedRun], path: Path) -> Path | None:
    """ECDF of per-client test Acc@1 (first seed of each method with predictions)."""
    seen: set[str] = set()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        csv_path = run.out_dir / "predictions.csv"
        label = run.method.label + (f" ({run.variant})" if run.variant else "")
        if label in seen or not csv_path.is_file():
            continue
        seen.add(label)
        acc = np.sort(per_client_accuracy(csv_path))
        ax.step(acc, np.arange(1, len(acc) + 1) / len(acc), where="post", label=label)
    if not seen:
        plt.close(fig)
        return None
    ax.set_xlabel("per-client test Acc@1")
    ax.set_ylabel("share of clients with at most this accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_participation(config: ExperimentConfig, runs: list[PlannedRun], path: Path) -> Path | None:
    """FedGeo's participation probability against the client's distinct places."""
    from server.app import simulation_dataset
    from server.run_config import RunConfig

    candidates = [
        r for r in runs if r.method.kind == "federated" and r.method.strategy == "fedgeo" and r.done
    ]
    if not candidates:
        return None
    run = candidates[-1] if config.sweep else candidates[0]
    result = json.loads(run.result_file.read_text(encoding="utf-8"))
    by_node = ((result.get("participation") or {}).get("probabilities") or {}).get("by_node")
    if not by_node:
        return None
    dataset = simulation_dataset(RunConfig.from_mapping(run_values(config, run)))
    distinct = np.array([len(np.unique(u.places[u.train])) for u in dataset.users])
    nodes = np.array([int(k) - 1 for k in by_node])  # stable id = 1 + partition id
    probs = np.array(list(by_node.values()), dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(distinct[nodes], probs, s=8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("distinct places in the client's training data")
    ax.set_ylabel("participation probability")
    title = run.method.label + (f", {run.variant}" if run.variant else "")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep(config: ExperimentConfig, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Test Acc@1 against the swept value, one line per method."""
    if config.sweep is None or not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in config.methods:
        xs, means, stds = [], [], []
        for value in config.sweep.values:
            variant = f"{config.sweep.key}={value}"
            accs = [
                r["acc@1"] for r in rows if r["method"] == method.name and r["variant"] == variant
            ]
            if accs:
                xs.append(float(value))
                means.append(np.mean(accs))
                stds.append(np.std(accs, ddof=1) if len(accs) > 1 else 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method.label)
    ax.set_xlabel(config.sweep.key)
    ax.set_ylabel("test Acc@1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_methods(summary: list[dict[str, Any]], path: Path) -> Path | None:
    """Test Acc@1 and MRR of every method (and sweep value), mean ± std over seeds as in
    the report's table (:func:`experiments.report.summarize`), one row each in order."""
    if not summary:
        return None
    names = [e["label"] + (f" ({e['variant']})" if e["variant"] else "") for e in summary]
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * len(names) + 1.4), sharey=True)
    for ax, metric in zip(axes, ("acc@1", "mrr"), strict=True):
        mean = [e[metric] for e in summary]
        std = [e[f"{metric}_std"] for e in summary]
        ax.errorbar(mean, y, xerr=std, fmt="o", capsize=3)
        ax.set_xlabel(f"test {metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0].set_yticks(y, names, fontsize=7)
    axes[0].invert_yaxis()
    return _save(fig, path)


def make_plots(
    config: ExperimentConfig, out_root: Path, folder: Path, rows: list[dict[str, Any]]
) -> list[Path]:
    """Every plot that the finished runs allow; returns the files written."""
    runs = _done(config, out_root)
    made = [
        plot_curves(runs, folder / "curves.png"),
        plot_test_curves(runs, folder / "test_curves.png"),
        plot_client_accuracy(runs, folder / "client_accuracy.png"),
        plot_participation(config, runs, folder / "participation.png"),
        plot_sweep(config, rows, folder / "sweep.png"),
        plot_methods(summarize(rows), folder / "methods.png"),
    ]
    return [p for p in made if p is not None]
