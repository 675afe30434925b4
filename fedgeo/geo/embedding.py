"""Prior place embeddings from the adjacency graph."""

from __future__ import annotations

import numpy as np

from fedgeo.geo.prior import AdjacencyPrior


def spectral_embedding(prior: AdjacencyPrior, dim: int, seed: int = 0) -> np.ndarray:
    """The ``dim`` leading non-trivial eigenvectors of Â (largest eigenvalues after the
    first), columns scaled to unit variance; deterministic for a seed. ``(L, dim)``."""
    from scipy.sparse.linalg import eigsh

    n = prior.num_places
    k = min(dim + 1, n - 1)
    if k < 1:
        return np.zeros((n, dim), dtype=np.float32)
    v0 = np.random.default_rng(seed).standard_normal(n)
    vals, vecs = eigsh(prior.matrix.astype(np.float64), k=k, which="LA", v0=v0)
    order = np.argsort(-vals, kind="stable")
    vecs = vecs[:, order][:, 1:]
    # fix the sign of each vector for determinism
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    std = vecs.std(axis=0)
    vecs = vecs / np.where(std > 0, std, 1.0)
    out = np.zeros((n, dim), dtype=np.float32)
    out[:, : vecs.shape[1]] = vecs
    return out
