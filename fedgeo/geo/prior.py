"""The global geographic adjacency prior, built from public place coordinates only.

``W_ij = exp(-d_ij^2 / (2 h^2))`` for ``j`` among the ``k`` nearest neighbours of ``i``
(haversine distance in km, sklearn BallTree), symmetrized ``W = max(W, W^T)``, plus
self-loops; ``Â = D^-1/2 W D^-1/2``. The bandwidth ``h`` defaults to the median
distance to the k-th neighbour.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from fedgeo.data.dataset import Places

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class PriorConfig:
    """How the adjacency prior is built."""

    k: int = 10
    """Neighbours per place (excluding itself)."""
    bandwidth_km: float | None = None
    """Gaussian bandwidth h; None = median distance to the k-th neighbour."""
    self_loops: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class AdjacencyPrior:
    """Sparse normalized adjacency ``matrix`` (CSR float32, L x L) over places."""

    def __init__(
        self,
        matrix: sp.csr_matrix,
        neighbors: np.ndarray,
        distances_km: np.ndarray,
        config: PriorConfig,
        bandwidth_km: float,
    ) -> None:
        self.matrix = matrix
        self.neighbors = neighbors
        self.distances_km = distances_km
        self.config = config
        self.bandwidth_km = bandwidth_km

    @property
    def num_places(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def from_places(cls, places: Places, config: PriorConfig | None = None) -> AdjacencyPrior:
        return build_adjacency_prior(places.latitude, places.longitude, config)

    def torch_sparse(self):
        """The matrix as a coalesced torch sparse COO tensor (float32)."""
        import torch

        coo = self.matrix.tocoo()
        indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        values = torch.from_numpy(coo.data.astype(np.float32))
        return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=True).coalesce()

    def to_bytes(self) -> bytes:
        """Compact, deterministic serialization (npz of the CSR arrays)."""
        buf = io.BytesIO()
        m = self.matrix
        np.savez_compressed(
            buf,
            indptr=m.indptr.astype(np.int64),
            indices=m.indices.astype(np.int32),
            data=m.data.astype(np.float32),
            shape=np.array(m.shape, dtype=np.int64),
            neighbors=self.neighbors.astype(np.int32),
            distances_km=self.distances_km.astype(np.float32),
            k=np.array([self.config.k]),
            bandwidth_km=np.array([self.bandwidth_km]),
            fixed_bandwidth=np.array([self.config.bandwidth_km is not None]),
            self_loops=np.array([self.config.self_loops]),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> AdjacencyPrior:
        z = np.load(io.BytesIO(data))
        shape = tuple(int(x) for x in z["shape"])
        matrix = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
        bandwidth = float(z["bandwidth_km"][0])
        config = PriorConfig(
            k=int(z["k"][0]),
            bandwidth_km=bandwidth if bool(z["fixed_bandwidth"][0]) else None,
            self_loops=bool(z["self_loops"][0]),
        )
        return cls(matrix, z["neighbors"], z["distances_km"], config, bandwidth)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> AdjacencyPrior:
        return cls.from_bytes(Path(path).read_bytes())

    def checksum(self) -> str:
        """sha256 of the matrix arrays: equal priors have equal checksums."""
        h = hashlib.sha256()
        for arr in (self.matrix.indptr, self.matrix.indices, self.matrix.data):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()


def build_adjacency_prior(
    latitude: np.ndarray, longitude: np.ndarray, config: PriorConfig | None = None
) -> AdjacencyPrior:
    """Build the prior from coordinates in degrees (deterministic)."""
    from sklearn.neighbors import BallTree

    cfg = config or PriorConfig()
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.asarray(longitude, dtype=np.float64)
    n = len(lat)
    if n == 0:
        raise ValueError("no places to build a prior from")
    k = min(cfg.k, n - 1)
    points = np.radians(np.column_stack([lat, lon]))
    if k > 0:
        dist, idx = BallTree(points, metric="haversine").query(points, k=k + 1)
        dist, idx = _drop_self(dist, idx)
        dist_km = dist * EARTH_RADIUS_KM
    else:
        dist_km = np.zeros((n, 0))
        idx = np.zeros((n, 0), dtype=np.int64)
    if cfg.bandwidth_km is not None:
        h = float(cfg.bandwidth_km)
    else:
        h = float(np.median(dist_km[:, -1])) if k > 0 else 1.0
    h = max(h, 1e-6)
    weights = np.exp(-(dist_km**2) / (2 * h * h))
    rows = np.repeat(np.arange(n), k)
    w = sp.csr_matrix((weights.ravel(), (rows, idx.ravel())), shape=(n, n))
    w = w.maximum(w.T)
    if cfg.self_loops:
        w = w + sp.identity(n, format="csr")
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    norm = sp.diags(inv) @ w @ sp.diags(inv)
    matrix = sp.csr_matrix(norm, dtype=np.float32)
    matrix.sort_indices()
    return AdjacencyPrior(matrix, idx.astype(np.int64), dist_km, cfg, h)


def _drop_self(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each point itself from its neighbour list (ties at distance 0 included)."""
    n, kp1 = idx.shape
    is_self = idx == np.arange(n)[:, None]
    has_self = is_self.any(axis=1)
    # drop the self column where present, else the farthest neighbour
    drop = np.where(has_self, is_self.argmax(axis=1), kp1 - 1)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    return dist[keep].reshape(n, kp1 - 1), idx[keep].reshape(n, kp1 - 1)
