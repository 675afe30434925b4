"""Per-round checkpoints and the run's ``results.json``, both written atomically.

A checkpoint (``<out-dir>/checkpoint.pkl``) holds everything the server needs to
continue a run after its last completed round: the global arrays, the strategy's state
(:func:`server.strategies.strategy_state`), the random number generator states, the
results so far, the flat run config and, with ``keep-best-model``, the best validated
arrays. It is a pickle: only load your own
checkpoints. Files are written to a temporary file in the same folder, flushed to disk
and renamed over the old one (``os.replace``), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgeo.atomic import atomic_write
from fedgeo.results import to_jsonable

CHECKPOINT_FILE = "checkpoint.pkl"
RESULTS_FILE = "results.json"
_FORMAT = 1


@dataclass
class Checkpoint:
    """The server's state after round ``server_round``."""

    server_round: int
    arrays: dict[str, np.ndarray]
    strategy_state: bytes
    results: dict[str, Any]
    config: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)
    best_arrays: dict[str, np.ndarray] | None = None
    """With ``keep-best-model``: the global arrays of the best validation so far."""


def rng_states() -> dict[str, Any]:
    """The global generators' states (Python, NumPy, PyTorch)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back states saved by :func:`rng_states`."""
    if "python" in states:
        random.setstate(states["python"])
    if "numpy" in states:
        np.random.set_state(states["numpy"])
    if "torch" in states:
        torch.set_rng_state(states["torch"])


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``out_dir/checkpoint.pkl``; return its path."""
    payload = {"format": _FORMAT, **checkpoint.__dict__}
    path = Path(out_dir) / CHECKPOINT_FILE
    atomic_write(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``out_dir``, or None when there is none."""
    path = Path(out_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        payload = pickle.load(fh)
    if not isinstance(payload, dict) or payload.pop("format", None) != _FORMAT:
        raise ValueError(f"{path}: not a FedGeo checkpoint")
    return Checkpoint(**payload)


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    """Write ``out_dir/results.json`` (strict JSON: NaN and infinities become null)."""
    path = Path(out_dir) / RESULTS_FILE
    text = json.dumps(to_jsonable(results), indent=2, allow_nan=False)
    atomic_write(path, (text + "\n").encode("utf-8"))
    return path
