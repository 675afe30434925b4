"""Simulation-only fault and attack injection."""

from __future__ import annotations

import numpy as np
import pytest

from client.faults import attack_update, fails_this_round, is_attacker

GLOBAL = {"w": np.array([1.0, 2.0], np.float32), "n": np.array([3], np.int64)}
TRAINED = {"w": np.array([1.5, 1.0], np.float32), "n": np.array([3], np.int64)}


def test_failures_follow_the_fraction_and_are_reproducible():
    cfg = {"inject-failure-fraction": 0.3}
    draws = [fails_this_round(cfg, 0, r, k) for r in range(1, 101) for k in range(100)]
    assert 0.27 < np.mean(draws) < 0.33
    assert draws == [fails_this_round(cfg, 0, r, k) for r in range(1, 101) for k in range(100)]
    assert not fails_this_round({}, 0, 1, 1)


def test_attackers_are_a_fixed_share_of_clients():
    cfg = {"inject-attack-fraction": 0.1}
    chosen = [is_attacker(cfg, 3, k) for k in range(5000)]
    assert 0.09 < np.mean(chosen) < 0.11
    assert chosen == [is_attacker(cfg, 3, k) for k in range(5000)]


@pytest.mark.parametrize(
    ("kind", "scale", "expected"),
    [("sign-flip", 1.0, [0.5, 3.0]), ("scale", 10.0, [6.0, -8.0])],
)
def test_attacks_rewrite_the_update(kind, scale, expected):
    cfg = {"inject-attack": kind, "inject-attack-scale": scale}
    out = attack_update(cfg, GLOBAL, TRAINED, 0, 1, 2)
    np.testing.assert_allclose(out["w"], expected)
    assert out["w"].dtype == np.float32 and out["n"].tolist() == [3]


def test_random_attack_and_unknown_kind():
    out = attack_update(
        {"inject-attack": "random", "inject-attack-scale": 5.0}, GLOBAL, TRAINED, 0, 1, 2
    )
    assert not np.allclose(out["w"], TRAINED["w"]) and np.all(np.isfinite(out["w"]))
    with pytest.raises(ValueError, match="inject-attack"):
        attack_update({"inject-attack": "nope"}, GLOBAL, TRAINED, 0, 1, 2)
