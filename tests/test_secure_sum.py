"""Secure summation (fedgeo.secure_sum): exact sums, dropouts, what a masked vector shows."""

from __future__ import annotations

import numpy as np
import pytest

from fedgeo.secure_sum import (
    ClientSession,
    SecureSumConfig,
    SecureSumError,
    ServerSession,
    cohorts,
    combine_secret,
    share_secret,
)


def run_protocol(
    vectors: dict[int, np.ndarray],
    *,
    neighbours: int = 4,
    drop_before_share: set[int] = frozenset(),
    drop_before_mask: set[int] = frozenset(),
    drop_before_unmask: set[int] = frozenset(),
    seed: int = 0,
):
    """The four stages between one server and in-process clients, with dropouts."""
    clients = tuple(sorted(vectors))
    length = len(next(iter(vectors.values())))
    config = SecureSumConfig(clients, length, neighbours=neighbours, seed=seed)
    server = ServerSession(config)
    sessions = {c: ClientSession(config, c) for c in clients}
    server.receive_setup({c: s.setup() for c, s in sessions.items()})
    alive = [c for c in clients if c not in drop_before_share]
    server.receive_shares({c: sessions[c].share(server.keys_for(c)) for c in alive})
    alive = [c for c in alive if c not in drop_before_mask]
    server.receive_masked({c: sessions[c].mask(vectors[c], server.shares_for(c)) for c in alive})
    sent, dropped = server.survivors()
    holders = [c for c in sent if c not in drop_before_unmask]
    total = server.unmask({c: sessions[c].unmask(sent, dropped) for c in holders})
    return total, sent, server


def random_vectors(n: int, length: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {100 + i: rng.integers(0, 2, length).astype(float) for i in range(n)}


def test_the_sum_equals_the_plain_sum():
    vectors = random_vectors(7, 300)
    total, sent, _ = run_protocol(vectors)
    assert sent == sorted(vectors)
    np.testing.assert_array_equal(total, sum(vectors.values()))


def test_fractional_and_negative_values_sum_to_the_fixed_point_precision():
    rng = np.random.default_rng(3)
    vectors = {i: rng.normal(0, 5, 50) for i in range(5)}
    total, _, _ = run_protocol(vectors, neighbours=2)
    np.testing.assert_allclose(total, sum(vectors.values()), atol=5 * 2**-16)


@pytest.mark.parametrize("dropped", [{102}, {101, 105}])
def test_clients_dropping_after_sharing_leave_the_sum_of_the_others(dropped):
    vectors = random_vectors(8, 200, seed=1)
    total, sent, _ = run_protocol(vectors, neighbours=6, drop_before_mask=dropped)
    assert set(sent) == set(vectors) - dropped
    np.testing.assert_array_equal(total, sum(vectors[c] for c in sent))


@pytest.mark.parametrize("dropped", [{100}, {103, 106}])
def test_clients_dropping_before_sharing_are_left_out(dropped):
    vectors = random_vectors(8, 100, seed=2)
    total, sent, _ = run_protocol(vectors, neighbours=6, drop_before_share=dropped)
    np.testing.assert_array_equal(total, sum(vectors[c] for c in sent))


def test_two_clients_silent_in_the_last_stage_do_not_stop_the_unmasking():
    vectors = random_vectors(10, 100, seed=4)
    total, sent, _ = run_protocol(
        vectors, neighbours=8, drop_before_mask={101}, drop_before_unmask={104, 107}
    )
    np.testing.assert_array_equal(total, sum(vectors[c] for c in sent))


def test_too_many_dropouts_is_a_clear_error():
    vectors = random_vectors(5, 20, seed=5)
    with pytest.raises(SecureSumError, match="shares"):
        run_protocol(vectors, neighbours=2, drop_before_unmask={100, 101, 102, 103})


def test_a_masked_vector_does_not_show_the_clients_counts():
    length = 4000
    config = SecureSumConfig((1, 2, 3), length, neighbours=2)
    server = ServerSession(config)
    sessions = {c: ClientSession(config, c) for c in config.clients}
    server.receive_setup({c: s.setup() for c, s in sessions.items()})
    server.receive_shares({c: s.share(server.keys_for(c)) for c, s in sessions.items()})
    counts = np.zeros(length)
    counts[: length // 2] = 1.0
    masked = sessions[1].mask(counts, server.shares_for(1))
    # Uniform-looking 64-bit words: half above 2^63, whatever the count.
    high = masked >= np.uint64(2**63)
    for part in (high[: length // 2], high[length // 2 :]):
        assert 0.45 < part.mean() < 0.55
    # No word equals the plain fixed-point value, and the low bit is unrelated to it.
    assert not np.any(masked == (counts * config.scale).astype(np.uint64))
    low = (masked & np.uint64(1)).astype(float)
    assert abs(np.corrcoef(low, counts)[0, 1]) < 0.1


def test_the_same_vector_masks_differently_in_every_session():
    vectors = {1: np.ones(64), 2: np.ones(64), 3: np.ones(64)}
    a = run_protocol(vectors, neighbours=2)[2].masked[1]
    b = run_protocol(vectors, neighbours=2)[2].masked[1]
    assert not np.array_equal(a, b)


def test_a_client_never_reveals_both_secrets_of_one_client():
    vectors = random_vectors(4, 10)
    clients = tuple(sorted(vectors))
    config = SecureSumConfig(clients, 10, neighbours=3)
    session = ClientSession(config, clients[0])
    with pytest.raises(SecureSumError, match="both"):
        session.unmask([clients[1], clients[2]], [clients[2]])


def test_the_server_leaves_out_a_vector_of_the_wrong_length_and_says_why():
    vectors = random_vectors(6, 40, seed=6)
    clients = tuple(sorted(vectors))
    config = SecureSumConfig(clients, 40, neighbours=4)
    server = ServerSession(config)
    sessions = {c: ClientSession(config, c) for c in clients}
    server.receive_setup({c: s.setup() for c, s in sessions.items()})
    server.receive_shares({c: s.share(server.keys_for(c)) for c, s in sessions.items()})
    masked = {c: sessions[c].mask(vectors[c], server.shares_for(c)) for c in clients}
    masked[clients[2]] = masked[clients[2]][:-1]
    rejected = server.receive_masked(masked)
    assert len(rejected) == 1 and "expected uint64 (40,)" in rejected[0]
    sent, dropped = server.survivors()
    assert dropped == [clients[2]]
    total = server.unmask({c: sessions[c].unmask(sent, dropped) for c in sent})
    np.testing.assert_array_equal(total, sum(vectors[c] for c in sent))


def test_malformed_public_keys_are_rejected():
    config = SecureSumConfig((1, 2, 3), 5)
    server = ServerSession(config)
    assert server.receive_setup({1: {"c": b"short", "s": b"x" * 32}})
    assert 1 not in server.public_keys


def test_a_client_session_survives_a_round_trip_through_bytes():
    config = SecureSumConfig((1, 2, 3), 8, neighbours=2)
    sessions = {c: ClientSession(config, c) for c in config.clients}
    server = ServerSession(config)
    server.receive_setup({c: s.setup() for c, s in sessions.items()})
    server.receive_shares({c: s.share(server.keys_for(c)) for c, s in sessions.items()})
    restored = {
        c: ClientSession.from_bytes(SecureSumConfig.from_json(config.to_json()), c, s.to_bytes())
        for c, s in sessions.items()
    }
    vectors = {c: np.full(8, float(c)) for c in config.clients}
    server.receive_masked({c: restored[c].mask(vectors[c], server.shares_for(c)) for c in restored})
    sent, dropped = server.survivors()
    total = server.unmask({c: restored[c].unmask(sent, dropped) for c in sent})
    np.testing.assert_array_equal(total, np.full(8, 6.0))


def test_shamir_shares_rebuild_the_secret_from_any_threshold_subset():
    secret = bytes(range(32))
    shares = share_secret(secret, 3, 5)
    assert combine_secret(shares[1:4]) == secret
    assert combine_secret([shares[0], shares[2], shares[4]]) == secret
    assert combine_secret(shares[:2]) != secret


def test_neighbour_graph_is_symmetric_with_the_asked_degree():
    config = SecureSumConfig(tuple(range(20)), 4, neighbours=6, seed=3)
    graph = config.neighbour_map()
    assert all(len(v) == 6 for v in graph.values())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)


def test_cohorts_cover_every_client_once():
    groups = cohorts(list(range(23)), 10)
    assert sorted(c for g in groups for c in g) == list(range(23))
    assert all(len(g) >= 10 for g in groups)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": (1,), "length": 3}, "at least 2 clients"),
        ({"clients": (1, 1), "length": 3}, "distinct"),
        ({"clients": (1, 2), "length": 0}, "length"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(SecureSumError, match=message):
        SecureSumConfig(**kwargs)
