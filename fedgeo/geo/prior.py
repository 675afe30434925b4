"""The global geographic adjacency prior, built only from public place coordinates.

For ``L`` places with WGS84 coordinates the prior is a sparse ``(L, L)`` matrix

1. **kNN**: the ``k`` nearest other places of every place by great-circle (haversine)
   distance on a sphere of radius :data:`EARTH_RADIUS_KM`, found with scikit-learn's
   ``BallTree(metric="haversine")`` on radians. Ties are ordered by place index.
2. **Gaussian kernel**: ``w_ij = exp(-d_ij^2 / (2 h^2))``; ``h`` is ``bandwidth_km`` or,
   when that is ``None``, the median over places of the distance to the k-th neighbour.
3. **Symmetrization** ``W = max(W, W^T)``: ``i`` and ``j`` are linked when either is among
   the other's ``k`` nearest (the weight depends only on ``d_ij``, so the max keeps it).
   Links whose weight is below ``min_weight`` (or underflows to 0) are dropped.
4. **Self-loops** (optional): ``W_ii = 1``.
5. **Symmetric normalization** ``Â = D^{-1/2} W D^{-1/2}``, ``D = diag(W 1)``; a place
   with degree 0 (possible only without self-loops) has an all-zero row.

``Â`` is stored as a float32 CSR matrix. The build is deterministic: the same
coordinates and settings give byte-identical :meth:`AdjacencyPrior.to_bytes` output,
whose SHA-256 (:meth:`AdjacencyPrior.checksum`) lets clients and server check that they
hold the same prior. See docs/prior.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from fedgeo.data.errors import DataError
from fedgeo.data.stats import EARTH_RADIUS_KM

if TYPE_CHECKING:
    import torch

    from fedgeo.data.dataset import Places

FORMAT_NAME = "fedgeo-adjacency-prior"
FORMAT_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ARRAYS = ("indptr", "indices", "data", "neighbors", "distances_km")


@dataclass(frozen=True)
class PriorConfig:
    """Settings of the adjacency prior.

    Attributes
    ----------
    k:
        Neighbours per place (at most ``L - 1`` are used when there are fewer places).
    bandwidth_km:
        Gaussian bandwidth ``h`` in km; ``None`` picks it automatically as the median,
        over places, of the distance to the k-th nearest neighbour (if that median is 0,
        the median of the positive kNN distances; if there are none, 1 km).
    self_loops:
        Add ``W_ii = 1`` before normalizing.
    min_weight:
        Drop links whose Gaussian weight is below this value (0 keeps every link).
    """

    k: int = 10
    bandwidth_km: float | None = None
    self_loops: bool = True
    min_weight: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise ValueError(f"prior k must be an integer >= 1, got {self.k!r}")
        if self.bandwidth_km is not None and not (
            isinstance(self.bandwidth_km, int | float)
            and math.isfinite(self.bandwidth_km)
            and self.bandwidth_km > 0
        ):
            raise ValueError(f"prior bandwidth_km must be > 0 or None, got {self.bandwidth_km!r}")
        if not isinstance(self.self_loops, bool | np.bool_):
            raise ValueError(f"prior self_loops must be a bool, got {self.self_loops!r}")
        if not (isinstance(self.min_weight, int | float) and 0.0 <= self.min_weight <= 1.0):
            raise ValueError(f"prior min_weight must be in [0, 1], got {self.min_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (``PriorConfig(**d)`` restores them)."""
        return dataclasses.asdict(self)


def check_coordinates(latitude: Any, longitude: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float64 copies of WGS84 degree arrays; :class:`DataError` on bad values."""
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.asarray(longitude, dtype=np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or lat.shape != lon.shape:
        raise DataError(
            f"latitude and longitude must be 1-D arrays of equal length, got shapes "
            f"{lat.shape} and {lon.shape}",
            field="latitude",
        )
    for name, values, bound in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        bad = ~np.isfinite(values) | (np.abs(values) > bound)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"place {i}: {values[i]!r} is not a finite value in [-{bound:g}, {bound:g}]",
                field=name,
            )
    return lat, lon


def nearest_places(lat: np.ndarray, lon: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each place's ``k`` nearest other places and their distances in km (see :func:`_knn`)."""
    return _knn(*check_coordinates(lat, lon), min(k, max(len(lat) - 1, 0)))


def _knn(lat: np.ndarray, lon: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbors int64, distances_km float32)``, both ``(L, k)``, self excluded.

    Each row is sorted by (distance, index). With duplicate coordinates the place
    itself may come back anywhere among the zero-distance ties (or not at all when
    more than ``k + 1`` places share a point); it is removed, else the farthest result.
    """
    n = len(lat)
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    from sklearn.neighbors import BallTree

    points = np.radians(np.column_stack([lat, lon]))
    tree = BallTree(points, metric="haversine")
    dist, ind = tree.query(points, k=k + 1)
    is_self = ind == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    ind = ind[keep].reshape(n, k).astype(np.int64)
    dist_km = (dist[keep].reshape(n, k) * EARTH_RADIUS_KM).astype(np.float32)
    order = np.lexsort((ind, dist_km), axis=-1)
    rows = np.arange(n)[:, None]
    return ind[rows, order], dist_km[rows, order]


def _auto_bandwidth(distances_km: np.ndarray) -> float:
    """The median distance to the k-th neighbour (see :class:`PriorConfig`)."""
    if distances_km.shape[1] == 0:
        return 1.0
    h = float(np.median(distances_km[:, -1].astype(np.float64)))
    if h > 0:
        return h
    positive = distances_km[distances_km > 0]
    return float(np.median(positive.astype(np.float64))) if positive.size else 1.0


def affinity_from_knn(
    neighbors: np.ndarray,
    distances_km: np.ndarray,
    bandwidth_km: float,
    config: PriorConfig,
) -> sp.csr_matrix:
    """The symmetrized Gaussian affinity ``W`` (float64 CSR, self-loops per ``config``).

    Deterministic function of its inputs; :func:`build_adjacency_prior` normalizes it.
    """
    n, k = neighbors.shape
    d = distances_km.astype(np.float64)
    weights = np.exp(-(d * d) / (2.0 * bandwidth_km * bandwidth_km))
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    keep = (weights.ravel() > 0) & (weights.ravel() >= config.min_weight)
    w = sp.csr_matrix((weights.ravel()[keep], (rows[keep], neighbors.ravel()[keep])), shape=(n, n))
    w = w.maximum(w.T).tocsr()
    if config.self_loops:
        w = (w + sp.identity(n, dtype=np.float64, format="csr")).tocsr()
    w.sum_duplicates()
    w.eliminate_zeros()
    w.sort_indices()
    return w


def _normalize(w: sp.csr_matrix) -> sp.csr_matrix:
    """``D^{-1/2} W D^{-1/2}`` as canonical float32 CSR with int32 indices.

    Each entry is ``W_ij * (s_i * s_j)`` so that a symmetric ``W`` gives an exactly
    symmetric result.
    """
    n = w.shape[0]
    degree = np.asarray(w.sum(axis=1)).ravel()
    scale = np.zeros(n, dtype=np.float64)
    np.divide(1.0, np.sqrt(degree), out=scale, where=degree > 0)
    coo = w.tocoo()
    data = coo.data * (scale[coo.row] * scale[coo.col])
    a = sp.csr_matrix((data.astype(np.float32), (coo.row, coo.col)), shape=(n, n))
    a.sum_duplicates()
    a.sort_indices()
    return _canonical(a.indptr, a.indices, a.data, n)


def _canonical(indptr: Any, indices: Any, data: Any, n: int) -> sp.csr_matrix:
    return sp.csr_matrix(
        (
            np.asarray(data, dtype=np.float32),
            np.asarray(indices, dtype=np.int32),
            np.asarray(indptr, dtype=np.int32),
        ),
        shape=(n, n),
    )


class AdjacencyPrior:
    """The normalized geographic adjacency ``Â`` of ``L`` places and its kNN table.

    Build it with :func:`build_adjacency_prior` or :meth:`from_places`; restore it with
    :meth:`from_bytes` / :meth:`load`.

    Attributes
    ----------
    matrix:
        ``Â`` as ``scipy.sparse.csr_matrix`` float32 ``(L, L)``, symmetric.
    neighbors:
        int64 ``(L, k')`` indices of each place's nearest other places, nearest first
        (``k' = min(k, L - 1)``); read-only.
    distances_km:
        float32 ``(L, k')`` haversine distances to those neighbours; read-only.
    bandwidth_km:
        The Gaussian bandwidth actually used (the automatic one when the config has None).
    config:
        The :class:`PriorConfig` it was built with.
    """

    def __init__(
        self,
        matrix: sp.csr_matrix,
        neighbors: np.ndarray,
        distances_km: np.ndarray,
        bandwidth_km: float,
        config: PriorConfig,
    ) -> None:
        n = matrix.shape[0]
        if matrix.shape != (n, n):
            raise ValueError(f"prior matrix must be square, got shape {matrix.shape}")
        if neighbors.shape != distances_km.shape or neighbors.shape[0] != n:
            raise ValueError(
                f"neighbors {neighbors.shape} and distances_km {distances_km.shape} must both "
                f"have {n} rows"
            )
        self.matrix = _canonical(matrix.indptr, matrix.indices, matrix.data, n)
        self.neighbors = np.array(neighbors, dtype=np.int64)
        self.distances_km = np.array(distances_km, dtype=np.float32)
        self.neighbors.flags.writeable = False
        self.distances_km.flags.writeable = False
        self.bandwidth_km = float(bandwidth_km)
        self.config = config

    @classmethod
    def from_places(cls, places: Places, config: PriorConfig | None = None) -> AdjacencyPrior:
        """The prior of a place table (position ``i`` = dense place index ``i``)."""
        return build_adjacency_prior(places.latitude, places.longitude, config)

    @property
    def num_places(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def num_neighbors(self) -> int:
        """``k' = min(k, L - 1)``: the columns of :attr:`neighbors`."""
        return int(self.neighbors.shape[1])

    def affinity(self) -> sp.csr_matrix:
        """The un-normalized symmetric affinity ``W`` (float64 CSR), rebuilt from the kNN."""
        return affinity_from_knn(self.neighbors, self.distances_km, self.bandwidth_km, self.config)

    def torch_sparse(self) -> torch.Tensor:
        """``Â`` as a coalesced float32 ``torch.sparse_coo_tensor``."""
        import torch

        coo = self.matrix.tocoo()
        indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        values = torch.from_numpy(coo.data.astype(np.float32))
        return torch.sparse_coo_tensor(
            indices,
            values,
            size=self.matrix.shape,
            dtype=torch.float32,
            is_coalesced=True,  # canonical CSR: sorted, no duplicates
            check_invariants=False,
        ).coalesce()

    # -- serialization -------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "num_places": self.num_places,
            "num_neighbors": self.num_neighbors,
            "bandwidth_km": self.bandwidth_km,
            "config": self.config.to_dict(),
        }

    def to_bytes(self, compress: bool = False) -> bytes:
        """A deterministic ``.npz`` (zip) of the CSR and kNN arrays; ``np.load`` reads it.

        Members: ``header.json`` (format, version, settings, bandwidth) and little-endian
        ``indptr``/``indices`` (int32), ``data`` (float32), ``neighbors`` (int32) and
        ``distances_km`` (float32) ``.npy`` arrays. Zip timestamps are fixed, so equal
        priors give equal bytes. ``compress=True`` deflates the members (about 40 %
        smaller); deflate output may differ between zlib builds, so :meth:`checksum`
        always hashes the uncompressed form.
        """
        if self.num_places >= 2**31 or self.matrix.nnz >= 2**31:
            raise ValueError("prior too large for the int32 wire format")
        arrays = {
            "indptr": self.matrix.indptr.astype("<i4"),
            "indices": self.matrix.indices.astype("<i4"),
            "data": self.matrix.data.astype("<f4"),
            "neighbors": self.neighbors.astype("<i4"),
            "distances_km": self.distances_km.astype("<f4"),
        }
        buffer = io.BytesIO()
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(buffer, "w", compression=method) as zf:
            header = json.dumps(self._header(), sort_keys=True, separators=(",", ":"))
            _write_member(zf, "header.json", header.encode("utf-8"), method)
            for name in _ARRAYS:
                payload = io.BytesIO()
                np.lib.format.write_array(
                    payload, np.ascontiguousarray(arrays[name]), allow_pickle=False
                )
                _write_member(zf, f"{name}.npy", payload.getvalue(), method)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> AdjacencyPrior:
        """Inverse of :meth:`to_bytes`; ``ValueError`` if ``blob`` is not such a prior."""
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                header = json.loads(zf.read("header.json").decode("utf-8"))
                arrays = {
                    name: np.lib.format.read_array(
                        io.BytesIO(zf.read(f"{name}.npy")), allow_pickle=False
                    )
                    for name in _ARRAYS
                }
        except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError) as err:
            raise ValueError(f"not a FedGeo adjacency prior: {err}") from err
        if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"not a FedGeo adjacency prior of version {FORMAT_VERSION}: header "
                f"{header.get('format')!r} version {header.get('version')!r}"
            )
        try:
            config = PriorConfig(**header["config"])
            n = int(header["num_places"])
            k = int(header["num_neighbors"])
            bandwidth = float(header["bandwidth_km"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bad adjacency prior header: {err}") from err
        indptr, indices, data = arrays["indptr"], arrays["indices"], arrays["data"]
        neighbors, distances = arrays["neighbors"], arrays["distances_km"]
        nnz = len(data)
        problems = []
        if indptr.shape != (n + 1,) or indptr[0] != 0 or indptr[-1] != nnz:
            problems.append("indptr")
        elif np.any(np.diff(indptr) < 0):
            problems.append("indptr not monotone")
        if indices.shape != (nnz,) or (nnz and (indices.min() < 0 or indices.max() >= n)):
            problems.append("indices")
        if neighbors.shape != (n, k) or distances.shape != (n, k):
            problems.append("neighbors/distances_km shape")
        elif neighbors.size and (neighbors.min() < 0 or neighbors.max() >= n):
            problems.append("neighbors out of range")
        if problems:
            raise ValueError(f"corrupt adjacency prior: {', '.join(problems)}")
        matrix = _canonical(indptr, indices, data, n)
        return cls(matrix, neighbors, distances, bandwidth, config)

    def save(self, path: str | Path, compress: bool = True) -> Path:
        """Write :meth:`to_bytes` to ``path`` (conventionally ``*.npz``); returns the path."""
        path = Path(path)
        path.write_bytes(self.to_bytes(compress=compress))
        return path

    @classmethod
    def load(cls, path: str | Path) -> AdjacencyPrior:
        """Read a prior written by :meth:`save`; :class:`DataError` naming the file if bad."""
        path = Path(path)
        try:
            blob = path.read_bytes()
        except OSError as err:
            raise DataError(
                f"cannot read adjacency prior: {err.strerror or err}", path=path
            ) from err
        try:
            return cls.from_bytes(blob)
        except ValueError as err:
            raise DataError(str(err), path=path) from err

    def checksum(self) -> str:
        """Hex SHA-256 of the uncompressed :meth:`to_bytes`: equal priors, equal checksums."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def __repr__(self) -> str:
        return (
            f"AdjacencyPrior(num_places={self.num_places}, k={self.num_neighbors}, "
            f"bandwidth_km={self.bandwidth_km:.4g}, nnz={self.matrix.nnz}, config={self.config})"
        )


def _write_member(zf: zipfile.ZipFile, name: str, payload: bytes, method: int) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = method
    info.create_system = 3
    info.external_attr = 0o644 << 16
    zf.writestr(info, payload)


def build_adjacency_prior(
    latitude: Any,
    longitude: Any,
    config: PriorConfig | None = None,
) -> AdjacencyPrior:
    """Build the adjacency prior of places at ``(latitude, longitude)`` (WGS84 degrees).

    Raises :class:`~fedgeo.data.errors.DataError` (field ``latitude``/``longitude``) for
    non-finite or out-of-range coordinates and ``ValueError`` for an empty place table.
    Cost: ``O(L k log L)`` for the BallTree queries plus ``O(L k)`` sparse work.
    """
    config = config if config is not None else PriorConfig()
    lat, lon = check_coordinates(latitude, longitude)
    n = len(lat)
    if n == 0:
        raise ValueError("cannot build an adjacency prior of zero places")
    k = min(int(config.k), n - 1)
    neighbors, distances = _knn(lat, lon, k)
    bandwidth = (
        float(config.bandwidth_km)
        if config.bandwidth_km is not None
        else _auto_bandwidth(distances)
    )
    w = affinity_from_knn(neighbors, distances, bandwidth, config)
    return AdjacencyPrior(_normalize(w), neighbors, distances, bandwidth, config)
