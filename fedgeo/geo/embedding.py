"""Prior place embeddings: a spectral embedding of the adjacency graph, and xyz seeds.

:func:`spectral_embedding` (see docs/prior.md for the derivation)

1. takes a symmetric affinity ``S`` over the places with self-loops: by default the
   *connectivity* of the prior's kNN graph (``S_ij = 1`` when ``j`` is among the ``k``
   nearest of ``i`` or ``i`` among those of ``j``, ``S_ii = 1``), or, with
   ``affinity="prior"``, the prior's own Gaussian affinity ``W`` (so ``M`` below is Â);
2. forms ``M = D^{-1/2} S D^{-1/2}`` and its connected components ``C_1..C_c`` (sorted
   by size, largest first, ties by smallest place index). Eigenvalue 1 of ``M`` has the
   eigenvectors ``D^{1/2} 1_C``; in the random-walk coordinates ``f = D^{-1/2} u`` they
   are the component indicators ``1_C``. The indicator of the whole graph is trivial;
3. the first ``min(c - 1, dim)`` columns are the indicators of ``C_2, C_3, ...`` (the
   remaining eigenvalue-1 directions, so a disconnected graph is handled exactly);
4. the other columns are ``f = D^{-1/2} u`` for the eigenvectors ``u`` of the largest
   eigenvalues of ``M`` orthogonal to every ``D^{1/2} 1_C`` (largest first). They are
   computed by ``numpy.linalg.eigh`` for ``L <= 1000`` and otherwise by ARPACK
   (``scipy.sparse.linalg.eigsh``) in shift-invert mode on the deflated Laplacian
   ``B = I - M + 3 U U^T`` around ``-1e-4`` with one sparse LU factorization (SuperLU,
   symmetric minimum-degree ordering) and a seeded start vector ``v0``;
5. each column's sign is fixed so that its largest-magnitude entry (first on ties) is
   positive, then the column is centred and scaled to unit variance. Columns beyond
   the ``L - 1`` available directions are zero.

The same prior, ``dim`` and ``seed`` give the same array on the same platform.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from fedgeo.geo.prior import AdjacencyPrior, check_coordinates

DENSE_MAX_PLACES = 1000
"""Up to this many places the eigenvectors come from a dense ``eigh``."""
SHIFT = 1e-4
"""Shift-invert point ``-SHIFT`` for the Laplacian eigenvalues (ARPACK path)."""
ARPACK_TOL = 1e-6
"""ARPACK relative accuracy of the eigenvalues."""
AFFINITIES = ("connectivity", "prior")


def knn_connectivity(neighbors: np.ndarray) -> sp.csr_matrix:
    """Binary symmetrized kNN graph with self-loops (float64 CSR)."""
    n, k = neighbors.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    c = sp.csr_matrix((np.ones(n * k), (rows, neighbors.ravel())), shape=(n, n))
    c = c.maximum(c.T).tocsr()
    c = (c + sp.identity(n, dtype=np.float64, format="csr")).tocsr()
    c.sort_indices()
    return c


def _components(s: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, order)``: component of each place, components largest first."""
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(s, directed=False)
    sizes = np.bincount(labels)
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    return labels, order


class _ComponentBasis:
    """The orthonormal vectors ``u_C = D^{1/2} 1_C / ||.||`` (disjoint supports)."""

    def __init__(self, labels: np.ndarray, degree: np.ndarray) -> None:
        n = len(labels)
        self.count = int(labels.max()) + 1 if n else 0
        u = np.sqrt(np.maximum(degree, 0.0))
        zero = np.bincount(labels, weights=u * u, minlength=self.count) == 0
        u = np.where(zero[labels], 1.0, u)  # zero-volume component: plain indicator
        norms = np.sqrt(np.bincount(labels, weights=u * u, minlength=self.count))
        self.matrix = sp.csr_matrix(
            (u / norms[labels], (np.arange(n), labels)), shape=(n, self.count)
        )
        self.matrix_t = self.matrix.T.tocsr()

    def project(self, x: np.ndarray) -> np.ndarray:
        """``U U^T x``."""
        return self.matrix @ (self.matrix_t @ x)

    def project_out(self, x: np.ndarray) -> np.ndarray:
        """``(I - U U^T) x``."""
        return x - self.project(x)

    def dense(self) -> np.ndarray:
        return self.matrix.toarray()


def _as_2d(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def _smallest_laplacian_vectors(
    m: sp.csr_matrix, basis: _ComponentBasis, count: int, seed: int
) -> np.ndarray:
    """Eigenvectors of the ``count`` smallest eigenvalues of ``B = I - M + 3 U U^T``."""
    n = m.shape[0]
    if n <= DENSE_MAX_PLACES or count >= n - 1:  # ARPACK needs count < n - 1
        u = basis.dense()
        b = np.eye(n) - m.toarray() + 3.0 * (u @ u.T)
        _, vecs = np.linalg.eigh((b + b.T) / 2)
        return vecs[:, :count]
    from scipy.sparse.linalg import LinearOperator, eigsh, splu

    # (1 + SHIFT) I - M is symmetric positive definite (eigenvalues in [SHIFT, 2]), so
    # SuperLU may skip pivoting and use a symmetric minimum-degree ordering.
    base = (sp.identity(n, format="csc") * (1.0 + SHIFT) - m).tocsc()
    lu = splu(
        base,
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )

    def apply_b(x: Any) -> np.ndarray:
        x = _as_2d(x)
        return x - m @ x + 3.0 * basis.project(x)

    def apply_inverse(x: Any) -> np.ndarray:
        x = _as_2d(x)
        inner = basis.project_out(lu.solve(basis.project_out(x)))
        return inner + basis.project(x) / (3.0 + SHIFT)

    b_op = LinearOperator((n, n), matvec=apply_b, matmat=apply_b, dtype=np.float64)
    inv_op = LinearOperator((n, n), matvec=apply_inverse, matmat=apply_inverse, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    vals, vecs = eigsh(b_op, k=count, sigma=-SHIFT, which="LM", OPinv=inv_op, v0=v0, tol=ARPACK_TOL)
    order = np.argsort(vals, kind="stable")
    return vecs[:, order]


def _fix_signs(x: np.ndarray) -> np.ndarray:
    if x.shape[1] == 0:
        return x
    peak = np.abs(x).argmax(axis=0)
    signs = np.sign(x[peak, np.arange(x.shape[1])])
    return x * np.where(signs == 0, 1.0, signs)


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    ok = std > 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0, initial=0.0))
    return np.where(ok, x / np.where(ok, std, 1.0), 0.0)


def spectral_embedding(
    prior: AdjacencyPrior,
    dim: int,
    seed: int = 0,
    *,
    affinity: str = "connectivity",
) -> np.ndarray:
    """The ``(L, dim)`` float32 spectral embedding of the prior's place graph.

    Parameters
    ----------
    prior:
        The adjacency prior (only its kNN table, and for ``affinity="prior"`` its
        Gaussian weights, are used).
    dim:
        Number of columns.
    seed:
        Seeds ARPACK's start vector (the result does not otherwise depend on it).
    affinity:
        ``"connectivity"`` (default): the binary symmetrized kNN graph of the prior.
        ``"prior"``: the prior's Gaussian affinity, i.e. the eigenvectors of Â itself.
        The Gaussian weights of far neighbours are nearly zero, so on real data with
        sparse outskirts (NYC) the leading eigenvectors of Â localize on a few nearly
        isolated places; the connectivity graph gives smooth, city-wide directions.

    See the module docstring for the exact definition.
    """
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"embedding dim must be an integer >= 1, got {dim!r}")
    if affinity not in AFFINITIES:
        raise ValueError(f"affinity must be one of {AFFINITIES}, got {affinity!r}")
    dim = int(dim)
    n = prior.num_places
    s = knn_connectivity(prior.neighbors) if affinity == "connectivity" else prior.affinity()
    degree = np.asarray(s.sum(axis=1)).ravel()
    scale = np.zeros(n)
    np.divide(1.0, np.sqrt(degree), out=scale, where=degree > 0)
    m = sp.csr_matrix(sp.diags(scale) @ s @ sp.diags(scale))
    m = (m + m.T) * 0.5

    labels, order = _components(s)
    basis = _ComponentBasis(labels, degree)
    out = np.zeros((n, dim))
    n_comp = min(len(order) - 1, dim)
    for j in range(n_comp):
        out[:, j] = labels == order[j + 1]
    n_local = min(dim - n_comp, n - basis.count)
    if n_local > 0:
        vecs = _smallest_laplacian_vectors(m, basis, n_local, seed)
        out[:, n_comp : n_comp + n_local] = _fix_signs(vecs * scale[:, None])
    return _standardize(out).astype(np.float32)


def coordinate_features(latitude: Any, longitude: Any) -> np.ndarray:
    """Unit-sphere coordinates ``(cos φ cos λ, cos φ sin λ, sin φ)``, ``(L, 3)`` float32.

    ``φ`` latitude, ``λ`` longitude (WGS84 degrees); Euclidean distance between rows is
    the chord length, monotone in the great-circle distance. float32 resolves about
    0.6 m on the Earth's surface.
    """
    lat, lon = check_coordinates(latitude, longitude)
    phi, lam = np.radians(lat), np.radians(lon)
    xyz = np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
    return xyz.astype(np.float32)
