"""``fedgeo data inspect``: what a check-in file holds, as the readers see it;
``fedgeo data sparsify``: a sparse-history copy of it (a few days of each user)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedgeo.cli.common import (
    add_format_arguments,
    non_negative_float,
    positive_float,
    read_from_args,
)
from fedgeo.cli.errors import UsageError
from fedgeo.data.readers import ReadResult
from fedgeo.data.sparsify import sparse_days
from fedgeo.data.stats import normalized_entropy, radius_of_gyration_km
from fedgeo.data.table import SECONDS_PER_DAY, write_checkins_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect check-in data files",
        description="Work with check-in data files.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    inspect = actions.add_parser(
        "inspect",
        help="counts, time span and per-user statistics of a check-in file",
        description="Read a check-in file as the other commands would and print counts of "
        "check-ins, users and locations, the time span, per-user statistics (check-ins, "
        "distinct locations, normalized entropy, radius of gyration) and skipped rows.",
    )
    inspect.add_argument(
        "data", metavar="PATH", help="check-in file, optionally gzip-compressed ('-' = stdin)"
    )
    add_format_arguments(inspect)
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)
    sparsify = actions.add_parser(
        "sparsify",
        help="write a sparse-history copy: every check-in of a few days of each user",
        description="Keep, for each user, every check-in of a few of its days (how many: "
        "log-normal with the given median; which: at random) and write the kept check-ins "
        "as a headed CSV that --format csv reads back. Use it to test a model on sparse "
        "histories of real movements.",
    )
    sparsify.add_argument(
        "data", metavar="PATH", help="check-in file, optionally gzip-compressed ('-' = stdin)"
    )
    sparsify.add_argument("out", metavar="OUT", help="CSV file to write")
    add_format_arguments(sparsify)
    sparsify.add_argument(
        "--median-days",
        type=positive_float,
        default=3.0,
        help="median days kept per user (default 3)",
    )
    sparsify.add_argument(
        "--sigma",
        type=non_negative_float,
        default=1.0,
        help="spread of the log-normal number of days; 0 keeps the median for everyone (default 1)",
    )
    sparsify.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sparsify.set_defaults(func=run_sparsify)


def run_inspect(args: argparse.Namespace) -> int:
    result = read_from_args(args)
    summary = summarize(result)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


def run_sparsify(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"{out}: its folder {out.parent} does not exist")
    result = read_from_args(args)
    kept = sparse_days(result.table, median_days=args.median_days, sigma=args.sigma, seed=args.seed)
    write_checkins_csv(kept, args.out, relative_time=result.relative_time)
    print(
        f"fedgeo: kept {len(kept)} of {len(result.table)} check-ins of "
        f"{kept['user_id'].nunique()} users "
        f"(median {int(np.median(kept.groupby('user_id').size()))} a user) -> {args.out}"
    )
    return 0


def _describe(values: np.ndarray) -> dict[str, float | None]:
    """min/median/mean/max of the finite values (None when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return dict.fromkeys(("min", "median", "mean", "max"))
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def _iso(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def per_user_arrays(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-user check-ins, distinct locations, normalized entropy and radius of
    gyration (km), one entry per user in order of first appearance."""
    users, _ = pd.factorize(table["user_id"])
    places, place_ids = pd.factorize(table["location_id"])
    n_users = int(users.max()) + 1 if len(users) else 0
    checkins = np.bincount(users, minlength=n_users)
    pairs = np.unique(users.astype(np.int64) * max(len(place_ids), 1) + places)
    distinct = np.bincount(pairs // max(len(place_ids), 1), minlength=n_users)
    order = np.argsort(users, kind="stable")
    lat = table["latitude"].to_numpy(dtype=np.float64)[order]
    lon = table["longitude"].to_numpy(dtype=np.float64)[order]
    sorted_places = places[order]
    bounds = np.concatenate(([0], np.cumsum(checkins)))
    entropy = np.empty(n_users)
    gyration = np.empty(n_users)
    for u in range(n_users):
        a, b = bounds[u], bounds[u + 1]
        entropy[u] = normalized_entropy(sorted_places[a:b])
        gyration[u] = radius_of_gyration_km(lat[a:b], lon[a:b])
    return {
        "checkins": checkins,
        "distinct_locations": distinct,
        "entropy": entropy,
        "radius_of_gyration_km": gyration,
    }


def summarize(result: ReadResult) -> dict[str, Any]:
    """The JSON-serializable summary ``fedgeo data inspect`` prints."""
    table = result.table
    times = table["timestamp"].to_numpy(dtype=np.int64)
    first, last = int(times.min()), int(times.max())
    per_user = per_user_arrays(table)
    summary: dict[str, Any] = {
        "path": result.path,
        "format": result.format,
        "checkins": len(table),
        "users": int(table["user_id"].nunique()),
        "locations": int(table["location_id"].nunique()),
        "skipped_rows": result.skipped,
        "skipped_examples": list(result.skipped_examples),
        "columns": dict(result.columns),
        "time": {
            "first": _iso(first),
            "last": _iso(last),
            "span_days": (last - first) / SECONDS_PER_DAY,
            "relative": result.relative_time,
        },
        "per_user": {name: _describe(values) for name, values in per_user.items()},
    }
    if "category" in table.columns:
        summary["categories"] = int(table["category"].nunique())
    return summary


def _number(value: float | None, decimals: int) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    if decimals == 0 and float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{max(decimals, 1)}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable table of a :func:`summarize` result."""
    time = summary["time"]
    note = "(relative times: origin not stated in the file)" if time["relative"] else ""
    rows = [
        ("check-ins", f"{summary['checkins']:,}", ""),
        ("users", f"{summary['users']:,}", ""),
        ("locations", f"{summary['locations']:,}", ""),
    ]
    if "categories" in summary:
        rows.append(("categories", f"{summary['categories']:,}", ""))
    rows += [
        ("skipped rows", f"{summary['skipped_rows']:,}", ""),
        ("time span", f"{time['span_days']:,.1f}", "days"),
        ("first check-in", time["first"], note),
        ("last check-in", time["last"], ""),
    ]
    lines = [f"{summary['path']} (format {summary['format']})"]
    lines += [f"  {label:<16}{value:>20}  {extra}".rstrip() for label, value, extra in rows]
    lines.append("")
    labels = {
        "checkins": ("check-ins", 0),
        "distinct_locations": ("distinct locations", 0),
        "entropy": ("normalized entropy", 3),
        "radius_of_gyration_km": ("radius of gyration km", 2),
    }
    lines.append(
        f"  {'per user':<24}" + "".join(f"{h:>10}" for h in ("min", "median", "mean", "max"))
    )
    for key, (label, decimals) in labels.items():
        stats = summary["per_user"][key]
        cells = []
        for stat in ("min", "median", "mean", "max"):
            d = 1 if (decimals == 0 and stat in ("median", "mean")) else decimals
            cells.append(f"{_number(stats[stat], d):>10}")
        lines.append(f"  {label:<24}" + "".join(cells))
    for example in summary["skipped_examples"]:
        lines.append(f"  skipped: {example}")
    return "\n".join(lines)
