"""Privacy accounting for differentially private federated rounds (no Flower here).

A DP round releases ``mean(clipped updates) + N(0, sigma^2)`` with ``sigma = z * C / m``
(noise multiplier ``z``, clipping norm ``C``, ``m`` clients expected per round): a
sampled Gaussian mechanism at the level of one *user* (one client holds all of one
user's data). :func:`rdp_epsilon` composes such rounds with the Rényi-DP accountant of
opacus (``opacus.accountants.RDPAccountant``'s analysis) and converts to
``(epsilon, delta)``.
The profile release is pure ``epsilon``-LDP (Laplace); :func:`ldp_total_epsilon`
composes repeated releases. See docs/privacy.md.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

ALPHAS: tuple[float, ...] = (
    # opacus's RDPAccountant.DEFAULT_ALPHAS (a test checks they still match) ...
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(12, 64)),
    # ... plus larger orders
    80.0,
    100.0,
    128.0,
    160.0,
    200.0,
    256.0,
    384.0,
    512.0,
    1024.0,
)
"""Rényi orders searched for the best conversion to (epsilon, delta): opacus's defaults
plus larger orders, which matter for large noise or few rounds."""


def rdp_epsilon(rounds: Sequence[tuple[float, float]], delta: float) -> tuple[float, float | None]:
    """``(epsilon, best order)`` after the DP ``rounds`` at ``delta``.

    Each round is ``(noise_multiplier, sample_rate)``: the noise standard deviation in
    units of the per-user sensitivity, and the probability that a given user takes part
    (1.0 = no amplification by sampling). No rounds spend nothing (``0.0, None``); a
    round without noise has no guarantee (``inf, None``). The result is what opacus's
    ``RDPAccountant`` gives after one ``step`` per round (orders :data:`ALPHAS`); RDP
    adds up over rounds, so each distinct ``(noise, rate)`` is computed once and cached.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not rounds:
        return 0.0, None
    counts = Counter((float(z), float(q)) for z, q in rounds)
    total = np.zeros(len(ALPHAS))
    for (noise_multiplier, sample_rate), steps in counts.items():
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
        if not noise_multiplier >= 0.0:
            raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        if noise_multiplier == 0.0:
            return math.inf, None
        total += steps * np.asarray(_rdp_of_one_step(noise_multiplier, sample_rate))
    from opacus.accountants.analysis.rdp import get_privacy_spent  # opacus loads in ~5 s

    with warnings.catch_warnings():
        # opacus warns when the best order is at the edge of the grid; ALPHAS is wide.
        warnings.simplefilter("ignore", UserWarning)
        epsilon, order = get_privacy_spent(orders=list(ALPHAS), rdp=total, delta=delta)
    return float(epsilon), float(order)


@lru_cache(maxsize=1024)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(ALPHAS)
    )
    return tuple(float(v) for v in np.atleast_1d(rdp))


def default_delta(num_users: int) -> float:
    """``min(1e-5, 1 / num_users)``: delta must stay well below one over the population."""
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    return min(1e-5, 1.0 / num_users)


def round_sample_size(num_nodes: int, fraction: float, minimum: int) -> int:
    """Clients sampled per round by Flower's FedAvg rule ``max(int(fraction * N), min)``,
    capped at ``N``."""
    return max(1, min(num_nodes, max(int(num_nodes * fraction), int(minimum))))


def effective_noise_multiplier(
    noise_multiplier: float, expected: int, aggregated: int, server_lr: float = 1.0
) -> float:
    """The noise multiplier a round actually achieved.

    The noise is calibrated for the mean of ``expected`` clipped updates (sensitivity
    ``C / expected``); a round that averages only ``aggregated`` of them has
    sensitivity ``C / aggregated``, and a server learning rate ``lr`` scales the released
    step (and its sensitivity) by ``lr``: ``z_eff = z * aggregated / (expected * lr)``.
    """
    if expected < 1 or aggregated < 1 or not server_lr > 0:
        raise ValueError("need expected >= 1, aggregated >= 1 and server_lr > 0")
    return float(noise_multiplier) * aggregated / (expected * float(server_lr))


def ldp_total_epsilon(epsilon: float, releases: int) -> float:
    """Basic composition of ``releases`` independent ``epsilon``-LDP releases."""
    if releases < 0:
        raise ValueError(f"releases must be >= 0, got {releases}")
    return float(epsilon) * releases
