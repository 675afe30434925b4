"""Shared test settings: the tiny synthetic federation several test files run."""

from __future__ import annotations

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
