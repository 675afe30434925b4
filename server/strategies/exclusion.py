"""FedGeo's probabilistic exclusion of extreme users.

A user who visits very few distinct places (or whose visits are concentrated on one
place) produces a local model that drifts far from what helps everyone else. FedGeo
does not ban such users; it lowers how often they take part:

    p(D) = p_min + (1 - p_min) * sigmoid((D - d0) / s)

with ``D`` the number of distinct places (or, for ``by="entropy"``, the normalized visit
entropy in [0, 1] with its own midpoint and slope). ``p_min > 0`` is a floor: everyone
keeps a chance to participate. Each round, every node is independently *eligible* with
its probability, then the round's participants are drawn uniformly from the eligible
ones (:func:`sample_participants`). With a ramp of ``R`` rounds the exclusion fades out:

    p_r(D) = p(D) + (1 - p(D)) * min(1, (r - 1) / R)

full strength in round 1, everyone at probability 1 from round ``R + 1``
(:func:`ramped_probability`). Formulas and rationale: docs/method.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from server.defaults import DEFAULTS

EXCLUSION_BY = ("distinct_places", "entropy")


@dataclass(frozen=True)
class ExclusionConfig:
    """Settings of the participation probability.

    Parameters
    ----------
    enabled : bool
        False gives every node probability 1 (plain uniform sampling).
    floor : float
        ``p_min`` in (0, 1]: the lowest probability anyone gets.
    midpoint : float
        ``d0`` for ``by="distinct_places"``: the number of distinct places at which the
        probability is halfway between the floor and 1.
    slope : float
        ``s`` > 0 for ``by="distinct_places"``: the probability goes from ~27% to ~73%
        of the way between the floor and 1 as ``D`` goes from ``d0 - s`` to ``d0 + s``
        (smaller is steeper).
    by : str
        ``"distinct_places"`` (profile key ``distinct_places``) or ``"entropy"`` (profile
        key ``entropy``, the normalized visit entropy in [0, 1]).
    entropy_midpoint, entropy_slope : float
        ``d0`` and ``s`` used when ``by="entropy"``.
    ramp_rounds : int
        ``R`` >= 0: the exclusion fades linearly to nothing over the first ``R`` rounds
        (every probability is 1 from round ``R + 1``); 0 keeps it at full strength in
        every round.
    """

    enabled: bool = bool(DEFAULTS["fedgeo-exclusion"])
    floor: float = float(DEFAULTS["fedgeo-floor"])
    midpoint: float = float(DEFAULTS["fedgeo-midpoint"])
    slope: float = float(DEFAULTS["fedgeo-slope"])
    by: str = str(DEFAULTS["fedgeo-exclusion-by"])
    entropy_midpoint: float = float(DEFAULTS["fedgeo-entropy-midpoint"])
    entropy_slope: float = float(DEFAULTS["fedgeo-entropy-slope"])
    ramp_rounds: int = int(DEFAULTS["fedgeo-exclusion-ramp"])

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"exclusion floor must be in (0, 1], got {self.floor}")
        if self.slope <= 0.0 or self.entropy_slope <= 0.0:
            raise ValueError(
                f"exclusion slopes must be > 0, got slope={self.slope}, "
                f"entropy_slope={self.entropy_slope}"
            )
        if self.by not in EXCLUSION_BY:
            raise ValueError(f"exclusion 'by' must be one of {EXCLUSION_BY}, got {self.by!r}")
        if not (math.isfinite(self.midpoint) and math.isfinite(self.entropy_midpoint)):
            raise ValueError("exclusion midpoints must be finite")
        if int(self.ramp_rounds) != self.ramp_rounds or self.ramp_rounds < 0:
            raise ValueError(
                f"exclusion ramp (run-config fedgeo-exclusion-ramp) must be an integer >= 0, "
                f"got {self.ramp_rounds!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def participation_probability(profile: Mapping[str, Any], config: ExclusionConfig) -> float:
    """Probability that a node with data ``profile`` is eligible in a round.

    ``profile`` is a client's data profile (``fedgeo.data.stats.user_profile``); it must
    hold ``distinct_places`` or ``entropy`` depending on ``config.by``. The result lies in
    ``[config.floor, 1]`` and is non-decreasing in ``D``.
    """
    if not config.enabled:
        return 1.0
    key = config.by
    if key not in profile:
        raise ValueError(f"profile has no '{key}' (needed by exclusion by={key!r})")
    value = float(profile[key])
    if not math.isfinite(value):
        raise ValueError(f"profile '{key}' must be finite, got {profile[key]!r}")
    if key == "entropy":
        z = (value - config.entropy_midpoint) / config.entropy_slope
    else:
        z = (value - config.midpoint) / config.slope
    p = config.floor + (1.0 - config.floor) * float(expit(z))
    return min(1.0, max(config.floor, p))


def ramped_probability(probability: float, server_round: int, ramp_rounds: int) -> float:
    """The participation probability in round ``server_round`` (from 1) when exclusion
    fades out over ``ramp_rounds`` rounds: ``p + (1 - p) * min(1, (r - 1) / R)``;
    ``probability`` itself when ``ramp_rounds`` is 0."""
    if ramp_rounds <= 0:
        return probability
    share = min(1.0, max(0, server_round - 1) / ramp_rounds)
    return min(1.0, probability + (1.0 - probability) * share)


def sample_participants(
    node_ids: Sequence[int],
    probabilities: Sequence[float],
    num_to_sample: int,
    rng: np.random.Generator,
) -> list[int]:
    """Draw one round's participants.

    Every node is eligible independently with its probability (a Bernoulli draw), then
    ``num_to_sample`` nodes are drawn uniformly without replacement from the eligible
    ones. When fewer nodes are eligible, all eligible nodes participate (possibly none:
    the round then trains nobody and keeps the global model). Nodes are put in
    ascending id order before drawing, so the result depends only on the set of nodes,
    their probabilities and ``rng`` (seed it with ``np.random.default_rng([seed, round])``
    for reproducible, resumable runs). Returns the participants in ascending id order.
    """
    if len(node_ids) != len(probabilities):
        raise ValueError(f"{len(node_ids)} node ids but {len(probabilities)} probabilities")
    if num_to_sample < 0:
        raise ValueError(f"num_to_sample must be >= 0, got {num_to_sample}")
    ids = np.asarray(node_ids, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    if np.any(~np.isfinite(probs)) or np.any(probs < 0.0) or np.any(probs > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("node ids must be distinct")
    order = np.argsort(ids, kind="stable")
    ids, probs = ids[order], probs[order]
    eligible = ids[rng.random(len(ids)) < probs]
    if len(eligible) <= num_to_sample:
        return [int(i) for i in eligible]
    chosen = rng.choice(eligible, size=num_to_sample, replace=False)
    return sorted(int(i) for i in chosen)
