"""Shared test settings: the tiny synthetic federation several test files run, and a way to
find the processes a test started (to check that none is left behind)."""

from __future__ import annotations

from pathlib import Path

NODES = 8
"""Clients of the tiny federation (one synthetic user each)."""

TINY_RUN = {
    "synthetic-num-users": NODES,
    "synthetic-num-places": 80,
    "synthetic-days": 21,
    "local-epochs": 1,
    "batch-size": 32,
    "model-embedding-dim": 8,
    "model-hidden-dim": 16,
    "model-window": 8,
    "prior-k": 5,
}
"""Run-config keys of a federation small enough for a test; files add their own keys."""


def marked_processes(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found
