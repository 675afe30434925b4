"""Result files every run writes: ``metrics.json`` and ``predictions.csv``.

``metrics.json`` holds a ``test`` and a ``validation`` object (keys ``acc@1``, ``acc@5``,
``acc@10``, ``mrr``, ``ndcg@10``, ``samples``) plus whatever describes the run (method,
configuration, timings, data set summary). It is strict JSON: NaN and infinities are
written as ``null``, numpy values as plain numbers.

``predictions.csv`` has one row per test sample: ``user_id``, ``target`` (the place id as
in the input file) and ``rank`` (the pessimistic 1-based rank, see :mod:`fedgeo.metrics`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: non-finite floats -> ``None``, numpy scalars and
    arrays -> Python numbers and lists, paths -> strings, dataclasses -> dicts, tuples and
    sets -> lists, mapping keys -> strings."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [to_jsonable(v) for v in items]
    if isinstance(value, complex):
        raise TypeError(f"cannot write complex number {value!r} to JSON")
    return str(value)


def write_metrics_json(
    out_dir: str | Path, *, test: Mapping[str, Any], validation: Mapping[str, Any], **extra: Any
) -> Path:
    """Write ``out_dir/metrics.json`` (creating ``out_dir``); return its path.

    ``test`` and ``validation`` are metric dicts (see :func:`fedgeo.metrics.compute_metrics`);
    ``extra`` keyword arguments become further top-level fields.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"test": test, "validation": validation, **extra}
    path = out / METRICS_FILE
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_predictions_csv(
    out_dir: str | Path, user_ids: Sequence[Any], targets: Sequence[Any], ranks: Sequence[int]
) -> Path:
    """Write ``out_dir/predictions.csv`` (columns ``user_id``, ``target``, ``rank``; creating
    ``out_dir``); return its path. ``targets`` are place ids as in the input file."""
    user_ids, targets, ranks = list(user_ids), list(targets), list(ranks)
    if not (len(user_ids) == len(targets) == len(ranks)):
        raise ValueError(
            f"user_ids, targets and ranks differ in length: "
            f"{len(user_ids)}, {len(targets)}, {len(ranks)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PREDICTIONS_FILE
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["user_id", "target", "rank"])
        for u, t, r in zip(user_ids, targets, ranks, strict=True):
            writer.writerow([_cell(u), _cell(t), int(r)])
    return path


def _cell(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
