"""FedGeo's probabilistic exclusion: participation probability and sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.strategies.exclusion import (
    ExclusionConfig,
    participation_probability,
    ramped_probability,
    sample_participants,
)


def _p(places: float, **kwargs) -> float:
    return participation_probability({"distinct_places": places}, ExclusionConfig(**kwargs))


def test_probability_is_monotone_in_distinct_places_and_bounded() -> None:
    values = [_p(d) for d in range(0, 40)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > values[0]
    assert all(0.05 <= v <= 1.0 for v in values)


def test_probability_formula_floor_and_midpoint() -> None:
    cfg = ExclusionConfig(floor=0.1, midpoint=4.0, slope=2.0)
    at_mid = participation_probability({"distinct_places": 4}, cfg)
    assert at_mid == pytest.approx(0.1 + 0.9 * 0.5)
    expected = 0.1 + 0.9 / (1.0 + math.exp(-(7 - 4.0) / 2.0))
    assert participation_probability({"distinct_places": 7}, cfg) == pytest.approx(expected)
    # Extremely concentrated users are pushed to the floor but never below it.
    assert participation_probability({"distinct_places": -1e9}, cfg) == pytest.approx(0.1)
    assert participation_probability({"distinct_places": 1e9}, cfg) == pytest.approx(1.0)


def test_two_place_user_gets_low_but_nonzero_probability() -> None:
    p2, p20 = _p(2), _p(20)
    assert 0.05 < p2 < 0.25
    assert p20 > 0.99


def test_entropy_mode_uses_its_own_midpoint_and_is_monotone() -> None:
    cfg = ExclusionConfig(by="entropy", entropy_midpoint=0.4, entropy_slope=0.05)
    probs = [participation_probability({"entropy": e}, cfg) for e in np.linspace(0, 1, 21)]
    assert all(b >= a for a, b in zip(probs, probs[1:], strict=False))
    assert participation_probability({"entropy": 0.4}, cfg) == pytest.approx(0.05 + 0.95 / 2)
    assert probs[0] == pytest.approx(0.05, abs=1e-3)


def test_disabled_config_gives_everyone_probability_one() -> None:
    cfg = ExclusionConfig(enabled=False)
    assert participation_probability({"distinct_places": 1}, cfg) == 1.0
    assert participation_probability({}, cfg) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"floor": 0.0},
        {"floor": 1.5},
        {"slope": 0.0},
        {"entropy_slope": -1},
        {"by": "radius"},
        {"ramp_rounds": -1},
        {"ramp_rounds": 2.5},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ExclusionConfig(**kwargs)


def test_ramp_fades_the_exclusion_linearly_to_nothing() -> None:
    # R = 4: full strength in round 1, a quarter of the way to 1 per round, 1 from round 5.
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    got = [ramped_probability(0.2, r, 4) for r in range(1, 7)]
    assert got == pytest.approx(expected)
    assert ramped_probability(1.0, 2, 4) == 1.0
    # No ramp: the same probability in every round.
    assert [ramped_probability(0.2, r, 0) for r in (1, 50, 500)] == [0.2, 0.2, 0.2]


def test_profile_without_the_needed_key_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="entropy"):
        participation_probability({"distinct_places": 3}, ExclusionConfig(by="entropy"))
    with pytest.raises(ValueError, match="finite"):
        participation_probability({"distinct_places": float("nan")}, ExclusionConfig())


def test_eligibility_frequencies_match_probabilities() -> None:
    probs = [0.05, 0.2, 0.5, 0.9, 1.0]
    nodes = [11, 3, 7, 42, 5]
    rounds = 4000
    counts = dict.fromkeys(nodes, 0)
    for r in range(1, rounds + 1):
        chosen = sample_participants(nodes, probs, len(nodes), np.random.default_rng([9, r]))
        for n in chosen:
            counts[n] += 1
    for node, p in zip(nodes, probs, strict=True):
        sd = math.sqrt(rounds * p * (1 - p))
        assert abs(counts[node] - rounds * p) <= 4 * sd + 1, (node, counts[node], p)


def test_draw_among_eligible_is_uniform_and_capped() -> None:
    nodes, rounds = [1, 2, 3, 4], 2000
    counts = dict.fromkeys(nodes, 0)
    for r in range(rounds):
        chosen = sample_participants(nodes, [1.0] * 4, 2, np.random.default_rng([0, r]))
        assert len(chosen) == 2 and len(set(chosen)) == 2
        for n in chosen:
            counts[n] += 1
    sd = math.sqrt(rounds * 0.5 * 0.5)
    assert all(abs(c - rounds / 2) <= 4 * sd for c in counts.values())


def test_fewer_eligible_than_requested_takes_all_eligible() -> None:
    chosen = sample_participants([1, 2, 3], [1.0, 0.0, 1.0], 3, np.random.default_rng(0))
    assert chosen == [1, 3]
    assert sample_participants([1, 2], [0.0, 0.0], 2, np.random.default_rng(0)) == []


def test_sampling_is_reproducible_and_independent_of_node_order() -> None:
    nodes = list(range(100, 130))
    probs = list(np.linspace(0.1, 1.0, len(nodes)))
    a = sample_participants(nodes, probs, 10, np.random.default_rng([5, 3]))
    b = sample_participants(nodes[::-1], probs[::-1], 10, np.random.default_rng([5, 3]))
    c = sample_participants(nodes, probs, 10, np.random.default_rng([5, 4]))
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("nodes", "probs", "k"),
    [([1, 2], [0.5], 1), ([1, 2], [0.5, 1.5], 1), ([1, 1], [0.5, 0.5], 1), ([1], [0.5], -1)],
)
def test_bad_sampling_inputs_are_rejected(nodes, probs, k) -> None:
    with pytest.raises(ValueError):
        sample_participants(nodes, probs, k, np.random.default_rng(0))
