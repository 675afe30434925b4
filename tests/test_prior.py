"""The geographic adjacency prior and its spectral embedding."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fedgeo.data.dataset import Places
from fedgeo.data.errors import DataError
from fedgeo.geo import embedding as embedding_module
from fedgeo.geo.embedding import coordinate_features, knn_connectivity, spectral_embedding
from fedgeo.geo.prior import (
    EARTH_RADIUS_KM,
    AdjacencyPrior,
    PriorConfig,
    build_adjacency_prior,
)


def random_points(n: int, seed: int = 0, size_deg: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 40.6 + rng.uniform(0, size_deg, n), -74.0 + rng.uniform(0, size_deg, n)


def haversine_km(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Dense great-circle distance matrix, written out independently of sklearn."""
    phi, lam = np.radians(lat), np.radians(lon)
    dphi = phi[:, None] - phi[None, :]
    dlam = lam[:, None] - lam[None, :]
    a = np.sin(dphi / 2) ** 2 + np.cos(phi)[:, None] * np.cos(phi)[None, :] * np.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


# -- the matrix ---------------------------------------------------------------------


def test_matrix_is_exactly_symmetric_float32_csr():
    prior = build_adjacency_prior(*random_points(60), PriorConfig(k=5))
    a = prior.matrix
    assert sp.isspmatrix_csr(a) and a.dtype == np.float32 and a.shape == (60, 60)
    assert (a != a.T).nnz == 0
    assert prior.num_places == 60


def test_normalization_matches_dense_hand_computation_on_five_points():
    lat = np.array([40.70, 40.71, 40.73, 40.80, 40.7005])
    lon = np.array([-74.00, -74.01, -73.99, -73.95, -74.002])
    k = 2
    prior = build_adjacency_prior(lat, lon, PriorConfig(k=k))

    dist = haversine_km(lat, lon)
    np.fill_diagonal(dist, np.inf)
    knn = np.argsort(dist, axis=1)[:, :k]
    h = np.median(dist[np.arange(5), knn[:, -1]])
    w = np.zeros((5, 5))
    for i in range(5):
        for j in knn[i]:
            w[i, j] = np.exp(-(dist[i, j] ** 2) / (2 * h**2))
    w = np.maximum(w, w.T) + np.eye(5)
    d_inv_sqrt = np.diag(1 / np.sqrt(w.sum(axis=1)))
    expected = d_inv_sqrt @ w @ d_inv_sqrt

    assert prior.bandwidth_km == pytest.approx(h, rel=1e-6)
    np.testing.assert_allclose(prior.matrix.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_neighbors_are_the_true_nearest_by_haversine():
    lat, lon = random_points(300, seed=3)
    k = 8
    prior = build_adjacency_prior(lat, lon, PriorConfig(k=k))
    dist = haversine_km(lat, lon)
    np.fill_diagonal(dist, np.inf)
    expected = np.argsort(dist, axis=1)[:, :k]
    assert prior.neighbors.shape == (300, k) and prior.distances_km.shape == (300, k)
    np.testing.assert_array_equal(prior.neighbors, expected)
    np.testing.assert_allclose(
        prior.distances_km, np.take_along_axis(dist, expected, axis=1), rtol=1e-5
    )
    assert not (prior.neighbors == np.arange(300)[:, None]).any()


def test_gaussian_weights_match_the_formula_and_the_bandwidth_rule():
    lat, lon = random_points(80, seed=5)
    fixed = build_adjacency_prior(lat, lon, PriorConfig(k=6, bandwidth_km=0.8, self_loops=False))
    w = fixed.affinity().toarray()
    degree = w.sum(axis=1)
    for i in range(80):
        for j, d in zip(fixed.neighbors[i], fixed.distances_km[i], strict=True):
            expected = np.exp(-(float(d) ** 2) / (2 * 0.8**2))
            assert w[i, j] == pytest.approx(expected, rel=1e-6)
            assert w[j, i] == w[i, j]
            assert fixed.matrix[i, j] == pytest.approx(
                expected / np.sqrt(degree[i] * degree[j]), rel=1e-5
            )
    assert np.all(np.diag(fixed.matrix.toarray()) == 0)

    auto = build_adjacency_prior(lat, lon, PriorConfig(k=6))
    assert auto.bandwidth_km == pytest.approx(np.median(auto.distances_km[:, -1]), rel=1e-6)
    assert np.all(np.diag(auto.affinity().toarray()) == 1.0)


def test_min_weight_drops_weak_links():
    lat, lon = random_points(100, seed=6)
    all_links = build_adjacency_prior(lat, lon, PriorConfig(k=6))
    strong = build_adjacency_prior(lat, lon, PriorConfig(k=6, min_weight=0.5))
    off_diag = strong.affinity() - sp.identity(100)
    assert off_diag.nnz < all_links.matrix.nnz - 100
    assert off_diag.data.min() >= 0.5


def test_build_is_deterministic_byte_for_byte():
    lat, lon = random_points(200, seed=7)
    first = build_adjacency_prior(lat, lon)
    second = build_adjacency_prior(lat.copy(), lon.copy())
    assert first.to_bytes() == second.to_bytes()
    assert first.to_bytes(compress=True) == second.to_bytes(compress=True)
    assert first.checksum() == second.checksum()
    assert len(first.checksum()) == 64
    assert build_adjacency_prior(lat, lon, PriorConfig(k=9)).checksum() != first.checksum()
    moved = lat.copy()
    moved[0] += 1e-4
    assert build_adjacency_prior(moved, lon).checksum() != first.checksum()


def test_to_bytes_round_trip_and_save_load(tmp_path):
    lat, lon = random_points(150, seed=8)
    config = PriorConfig(k=7, bandwidth_km=0.6, self_loops=False, min_weight=0.01)
    prior = build_adjacency_prior(lat, lon, config)
    for blob in (prior.to_bytes(), prior.to_bytes(compress=True)):
        back = AdjacencyPrior.from_bytes(blob)
        assert back.config == config
        assert back.bandwidth_km == prior.bandwidth_km
        assert (back.matrix != prior.matrix).nnz == 0 and back.matrix.dtype == np.float32
        np.testing.assert_array_equal(back.neighbors, prior.neighbors)
        np.testing.assert_array_equal(back.distances_km, prior.distances_km)
        assert back.checksum() == prior.checksum()
    assert len(prior.to_bytes(compress=True)) < len(prior.to_bytes())

    with np.load(prior.save(tmp_path / "prior.npz")) as npz:  # a plain .npz, too
        np.testing.assert_array_equal(npz["indptr"], prior.matrix.indptr)
    assert AdjacencyPrior.load(tmp_path / "prior.npz").checksum() == prior.checksum()


def test_corrupt_bytes_and_files_are_rejected_clearly(tmp_path):
    with pytest.raises(ValueError, match="not a FedGeo adjacency prior"):
        AdjacencyPrior.from_bytes(b"definitely not a zip")
    blob = bytearray(build_adjacency_prior(*random_points(30)).to_bytes())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(DataError) as err:
        AdjacencyPrior.load(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(DataError, match="missing.npz"):
        AdjacencyPrior.load(tmp_path / "missing.npz")


def test_duplicate_coordinates_are_at_distance_zero_with_weight_one():
    lat, lon = random_points(30, seed=9)
    lat[[3, 11, 20]] = lat[3]
    lon[[3, 11, 20]] = lon[3]
    prior = build_adjacency_prior(lat, lon, PriorConfig(k=4))
    w = prior.affinity()
    for i in (3, 11, 20):
        others = {3, 11, 20} - {i}
        assert set(prior.neighbors[i, :2]) == others
        np.testing.assert_array_equal(prior.distances_km[i, :2], 0.0)
        assert i not in prior.neighbors[i]
        for j in others:
            assert w[i, j] == 1.0


def test_more_duplicates_than_neighbours_never_list_a_place_as_its_own_neighbour():
    lat = np.array([40.7] * 8 + [40.71, 40.72])
    lon = np.array([-74.0] * 8 + [-74.01, -74.02])
    prior = build_adjacency_prior(lat, lon, PriorConfig(k=3))
    assert not (prior.neighbors == np.arange(10)[:, None]).any()
    np.testing.assert_array_equal(prior.distances_km[:8], 0.0)
    assert prior.bandwidth_km > 0  # median k-th distance is 0: falls back to positive ones
    assert (prior.matrix != prior.matrix.T).nnz == 0


def test_fewer_places_than_k_plus_one():
    prior = build_adjacency_prior([40.7, 40.71, 40.72, 40.73], [-74.0] * 4, PriorConfig(k=10))
    assert prior.neighbors.shape == (4, 3) and prior.num_neighbors == 3
    assert prior.matrix.nnz == 16  # everyone linked to everyone, plus self-loops

    single = build_adjacency_prior([40.7], [-74.0])
    assert single.neighbors.shape == (1, 0)
    np.testing.assert_array_equal(single.matrix.toarray(), [[1.0]])
    assert AdjacencyPrior.from_bytes(single.to_bytes()).num_places == 1
    lonely = build_adjacency_prior([40.7], [-74.0], PriorConfig(self_loops=False))
    assert lonely.matrix.nnz == 0

    with pytest.raises(ValueError, match="zero places"):
        build_adjacency_prior([], [])


def test_bad_coordinates_raise_data_error_naming_the_field():
    with pytest.raises(DataError, match="field 'latitude'.*place 1"):
        build_adjacency_prior([40.7, 95.0], [-74.0, -74.0])
    with pytest.raises(DataError, match="field 'longitude'"):
        build_adjacency_prior([40.7, 40.8], [-74.0, np.nan])
    with pytest.raises(DataError, match="equal length"):
        build_adjacency_prior([40.7, 40.8], [-74.0])


@pytest.mark.parametrize(
    "kwargs",
    [{"k": 0}, {"k": 2.5}, {"bandwidth_km": 0.0}, {"bandwidth_km": -1.0}, {"min_weight": 2.0}],
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        PriorConfig(**kwargs)


def test_from_places_and_torch_sparse_match_the_matrix():
    import torch

    lat, lon = random_points(40, seed=10)
    places = Places(np.arange(100, 140), lat, lon)
    prior = AdjacencyPrior.from_places(places, PriorConfig(k=4))
    assert prior.checksum() == build_adjacency_prior(lat, lon, PriorConfig(k=4)).checksum()
    tensor = prior.torch_sparse()
    assert tensor.dtype == torch.float32 and tensor.is_sparse and tensor.is_coalesced()
    np.testing.assert_array_equal(tensor.to_dense().numpy(), prior.matrix.toarray())


# -- the spectral embedding ---------------------------------------------------------


def random_walk_residual(affinity: sp.csr_matrix, emb: np.ndarray) -> float:
    """How far span{1, columns} is from invariant under P = D^-1 S (0 = eigenvectors)."""
    s = affinity.toarray()
    p = s / s.sum(axis=1, keepdims=True)
    basis = np.column_stack([np.ones(len(emb)), emb.astype(np.float64)])
    image = p @ basis
    coef, *_ = np.linalg.lstsq(basis, image, rcond=None)
    return float(np.abs(image - basis @ coef).max())


def test_spectral_embedding_shape_scale_and_determinism():
    prior = build_adjacency_prior(*random_points(120, seed=11), PriorConfig(k=6))
    emb = spectral_embedding(prior, 8, seed=0)
    assert emb.shape == (120, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(emb.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(emb.std(axis=0), 1, rtol=1e-4)
    assert np.array_equal(emb, spectral_embedding(prior, 8, seed=0))
    assert random_walk_residual(knn_connectivity(prior.neighbors), emb) < 1e-4
    exact = spectral_embedding(prior, 8, affinity="prior")
    assert random_walk_residual(prior.affinity(), exact) < 1e-4
    with pytest.raises(ValueError, match="affinity"):
        spectral_embedding(prior, 8, affinity="cosine")
    with pytest.raises(ValueError, match="dim"):
        spectral_embedding(prior, 0)


def test_spectral_embedding_separates_two_clusters():
    rng = np.random.default_rng(12)
    lat = np.concatenate([40.75 + rng.normal(0, 0.003, 25), 40.60 + rng.normal(0, 0.003, 25)])
    lon = np.concatenate([-73.98 + rng.normal(0, 0.003, 25), -73.90 + rng.normal(0, 0.003, 25)])
    cluster = np.repeat([0, 1], 25)
    prior = build_adjacency_prior(lat, lon, PriorConfig(k=5))
    for affinity in ("connectivity", "prior"):
        emb = spectral_embedding(prior, 4, affinity=affinity).astype(np.float64)
        # two components: the first column is the indicator of the second one
        assert np.ptp(emb[:25, 0]) == 0 and np.ptp(emb[25:, 0]) == 0 and emb[0, 0] != emb[25, 0]
        dist = np.linalg.norm(emb[:, None] - emb[None, :], axis=-1)
        same = cluster[:, None] == cluster[None, :]
        off_diag = ~np.eye(50, dtype=bool)
        assert dist[same & off_diag].mean() < dist[~same].mean()
        np.fill_diagonal(dist, np.inf)
        assert (cluster[dist.argmin(axis=1)] == cluster).all()


def test_spectral_embedding_follows_geography_along_a_street():
    rng = np.random.default_rng(13)
    lon = -74.0 + np.linspace(0, 0.3, 200) + rng.normal(0, 0.0003, 200)
    lat = 40.7 + rng.normal(0, 0.0005, 200)
    prior = build_adjacency_prior(lat, lon, PriorConfig(k=6))
    first = spectral_embedding(prior, 3)[:, 0]  # one component: the Fiedler direction
    rank_corr = np.corrcoef(np.argsort(np.argsort(first)), np.arange(200))[0, 1]
    assert abs(rank_corr) > 0.99


def test_sparse_eigensolver_agrees_with_dense(monkeypatch):
    rng = np.random.default_rng(14)
    lon = -74.0 + rng.uniform(0, 0.4, 400)
    lat = 40.7 + rng.uniform(0, 0.02, 400)
    prior = build_adjacency_prior(lat, lon, PriorConfig(k=8))
    dense = spectral_embedding(prior, 4).astype(np.float64)
    monkeypatch.setattr(embedding_module, "DENSE_MAX_PLACES", 10)
    sparse = spectral_embedding(prior, 4, seed=5).astype(np.float64)
    for j in range(4):
        assert abs(np.corrcoef(dense[:, j], sparse[:, j])[0, 1]) > 0.999
    assert np.array_equal(sparse, spectral_embedding(prior, 4, seed=5))


def test_spectral_embedding_with_more_columns_than_places():
    prior = build_adjacency_prior(*random_points(5, seed=15), PriorConfig(k=2))
    emb = spectral_embedding(prior, 8)
    assert emb.shape == (5, 8)
    assert np.all(emb[:, 4:] == 0) and np.all(emb[:, :4].std(axis=0) > 0.99)
    single = build_adjacency_prior([40.7], [-74.0])
    assert np.array_equal(spectral_embedding(single, 3), np.zeros((1, 3), dtype=np.float32))


def test_coordinate_features_are_unit_sphere_points():
    xyz = coordinate_features([0.0, 90.0, 0.0, 40.7], [0.0, 0.0, 90.0, -74.0])
    assert xyz.shape == (4, 3) and xyz.dtype == np.float32
    np.testing.assert_allclose(xyz[:3], [[1, 0, 0], [0, 0, 1], [0, 1, 0]], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1, rtol=1e-6)
    with pytest.raises(DataError, match="longitude"):
        coordinate_features([0.0], [200.0])
