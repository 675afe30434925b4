"""Checkpointable strategy state and per-round seeding.

:func:`strategy_state` pickles the strategy's ``__dict__`` minus callables (metric
aggregation functions and other hooks, which the constructor re-creates): this captures
everything that evolves across rounds without knowing each strategy (FedAvgM's
``momentum_vector``/``current_arrays``, FedAdam/FedYogi's ``m_t``, ``v_t`` and
``current_arrays``, SCAFFOLD's ``control``, FedDyn's ``h``, FedGeo's ``participation``,
``drift_log`` and ``probabilities``), and the configuration the run was built with.
:func:`restore_strategy_state` puts it back into a freshly built strategy of the same
class: the checkpoint's values win over the new constructor's, so a resumed run
continues exactly where it stopped. The bytes are a pickle: only load your own
checkpoints.

Flower's node sampling (``sample_nodes``) draws from Python's global ``random``; the
ServerApp calls :func:`seed_round` before each round so that sampling depends only on
``(seed, round)`` and a resumed run samples the same nodes.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

_FORMAT = 1


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def strategy_state(strategy: Strategy) -> bytes:
    """The strategy's evolving state as bytes (see the module docstring)."""
    state: dict[str, Any] = {}
    skipped: list[str] = []
    for key, value in vars(strategy).items():
        if callable(value):
            skipped.append(key)
            continue
        try:
            state[key] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(
                f"strategy attribute '{key}' of {_class_path(strategy)} cannot be "
                f"checkpointed: {exc}"
            ) from None
    payload = {
        "format": _FORMAT,
        "class": _class_path(strategy),
        "state": state,
        "skipped": skipped,
    }
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def restore_strategy_state(strategy: Strategy, data: bytes) -> None:
    """Load bytes from :func:`strategy_state` into ``strategy`` (same class)."""
    payload = pickle.loads(data)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError("not a strategy checkpoint (unknown format)")
    if payload["class"] != _class_path(strategy):
        raise ValueError(
            f"checkpoint holds a {payload['class']} state, cannot restore it into "
            f"{_class_path(strategy)}"
        )
    for key, blob in payload["state"].items():
        setattr(strategy, key, pickle.loads(blob))


def seed_round(seed: int, server_round: int) -> None:
    """Seed Python's ``random`` (Flower's node sampling) from ``(seed, server_round)``."""
    state = np.random.SeedSequence([int(seed), int(server_round)]).generate_state(2)
    random.seed(int(state[0]) << 32 | int(state[1]))
