"""Simulation-only fault and attack injection, for robustness tests and studies.

Run-config keys (sent to clients in every train instruction; a device ignores them):

* ``inject-failure-fraction`` f: in every round each simulated client fails its train
  task with probability f (an error reply, like a crashed or vanished phone). The draw
  uses ``(seed, round, client key)``, so runs are reproducible.
* ``inject-attack-fraction`` a: a fixed set of clients (each with probability a, drawn
  from ``(seed, client key)``) are attackers for the whole run. They train normally and
  then replace their update ``Δ = θ_k − θ`` before replying, by ``inject-attack``:
  ``sign-flip`` (``θ − s·Δ``), ``scale`` (``θ + s·Δ``) or ``random`` (``θ + s·N(0, 1)``),
  with ``s = inject-attack-scale``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedgeo.message_keys import ATTACK, ATTACK_FRACTION, ATTACK_SCALE, ATTACKS, FAILURE_FRACTION


class InjectedFailure(RuntimeError):
    """A failure injected by the simulation (reported as an error reply)."""


def fails_this_round(config: Mapping, seed: int, server_round: int, key: int) -> bool:
    """Whether this client's train task fails in this round."""
    fraction = float(config.get(FAILURE_FRACTION, 0.0))
    if fraction <= 0:
        return False
    return bool(np.random.default_rng([seed, server_round, key, 101]).random() < fraction)


def is_attacker(config: Mapping, seed: int, key: int) -> bool:
    """Whether this client attacks (the same clients for the whole run)."""
    fraction = float(config.get(ATTACK_FRACTION, 0.0))
    if fraction <= 0:
        return False
    return bool(np.random.default_rng([seed, key, 202]).random() < fraction)


def attack_update(
    config: Mapping,
    global_arrays: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    seed: int,
    server_round: int,
    key: int,
) -> dict[str, np.ndarray]:
    """The attacker's reply in place of its honest ``trained`` arrays."""
    kind = str(config.get(ATTACK, "sign-flip"))
    if kind not in ATTACKS:
        raise ValueError(f"{ATTACK} must be one of {', '.join(ATTACKS)}, got {kind!r}")
    scale = float(config.get(ATTACK_SCALE, 1.0))
    rng = np.random.default_rng([seed, server_round, key, 303])
    out = {}
    for name, value in trained.items():
        base = np.asarray(global_arrays[name])
        if value.dtype.kind != "f":
            out[name] = value
            continue
        delta = value.astype(np.float64) - base
        if kind == "sign-flip":
            new = base - scale * delta
        elif kind == "scale":
            new = base + scale * delta
        else:
            new = base + scale * rng.standard_normal(value.shape)
        out[name] = new.astype(value.dtype)
    return out
