"""Drift-minimizing aggregation of client models.

Every aggregator takes a list of ``(arrays, num_examples)`` pairs, ``arrays`` being a
dict name -> ``np.ndarray`` (one client's shared model), and returns an
:class:`Aggregate`: the new global arrays (same names, shapes and dtypes) plus
diagnostics, among them the *drift* ``sum_k n_k ||theta - theta_k|| / sum_k n_k``, the
example-weighted mean Euclidean distance of the clients to the new global model.

Computation is vectorized over flattened models: each client's arrays are concatenated
(in the first client's key order) into one vector, so an aggregator holds a ``K x P``
matrix (K clients, P scalars): float64 for the means; for the geometric median, the
clients' own precision when every array is float32 (a torch model's), since its
Weiszfeld iterations stream that matrix twice each and half the bytes is half the time.
Weights, distances and norms are float64 throughout. Results are split back and cast to
each array's dtype (integer arrays are rounded). Formulas: docs/method.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.defaults import DEFAULTS

MEDIAN_MAX_ITER = int(DEFAULTS["fedgeo-median-iters"])
MEDIAN_TOL = float(DEFAULTS["fedgeo-median-tol"])
DRIFT_SCALE = float(DEFAULTS["fedgeo-drift-scale"])

ClientArrays = tuple[Mapping[str, np.ndarray], float]
"""One client's ``(arrays, num_examples)``."""


@dataclass
class Aggregate:
    """An aggregation result and its diagnostics."""

    arrays: dict[str, np.ndarray]
    """The new global arrays."""
    weights: np.ndarray
    """Normalized weight of each client in the result (for the geometric median: the
    weights of the last Weiszfeld step, the result being their weighted mean)."""
    distances: np.ndarray
    """Euclidean distance of each client's model to the new global model."""
    drift: float
    """Example-weighted mean of ``distances``."""
    iterations: int = 0
    """Weiszfeld iterations (geometric median only)."""
    converged: bool = True

    def diagnostics(self) -> dict[str, float | int]:
        """Scalar diagnostics (MetricRecord-ready)."""
        return {
            "drift": float(self.drift),
            "drift-max": float(self.distances.max()) if len(self.distances) else 0.0,
            "weight-max": float(self.weights.max()) if len(self.weights) else 0.0,
            "aggregation-iterations": int(self.iterations),
        }


@dataclass(frozen=True)
class _Layout:
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]


class Workspace:
    """A reusable buffer for the ``K x P`` matrix of the geometric median.

    A strategy that aggregates every round keeps one, so that the matrix (190 MB for 100
    NYC models) is not allocated, and its pages faulted in, again each round; that fresh
    memory cost more than the Weiszfeld iterations themselves. A checkpoint stores it
    empty: it is scratch space, not state."""

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None

    def matrix(self, rows: int, cols: int, dtype: np.dtype | type) -> np.ndarray:
        """An uninitialized ``rows x cols`` array of ``dtype`` (grown when too small)."""
        size = rows * cols
        buffer = self._buffer
        if buffer is None or buffer.dtype != np.dtype(dtype) or buffer.size < size:
            buffer = self._buffer = np.empty(size, dtype=dtype)
        return buffer[:size].reshape(rows, cols)

    def __reduce__(self):
        return (Workspace, ())


def _work_dtype(layout: _Layout) -> type:
    """float32 when every array is float32 (no precision to lose), else float64."""
    return np.float32 if all(d == np.float32 for d in layout.dtypes) else np.float64


def _example_weights(clients: Sequence[ClientArrays]) -> np.ndarray:
    if not clients:
        raise ValueError("cannot aggregate zero clients")
    n = np.asarray([float(c[1]) for c in clients], dtype=np.float64)
    if np.any(~np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"num_examples must be finite and >= 0, got {n.tolist()}")
    if n.sum() <= 0:
        raise ValueError("num_examples sum to zero: nothing to weight by")
    return n


def _layout(clients: Sequence[ClientArrays]) -> _Layout:
    first = clients[0][0]
    keys = tuple(first)
    shapes = tuple(tuple(np.shape(first[k])) for k in keys)
    for i, (arrays, _) in enumerate(clients[1:], start=1):
        if set(arrays) != set(keys):
            raise ValueError(
                f"client {i} arrays {sorted(arrays)} differ from client 0 arrays {sorted(keys)}"
            )
        for k, shape in zip(keys, shapes, strict=True):
            if tuple(np.shape(arrays[k])) != shape:
                raise ValueError(
                    f"client {i} array '{k}' has shape {np.shape(arrays[k])}, expected {shape}"
                )
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    offsets = tuple(int(o) for o in np.cumsum([0, *sizes]))
    dtypes = tuple(np.asarray(first[k]).dtype for k in keys)
    return _Layout(keys, shapes, dtypes, offsets)


def flatten(
    clients: Sequence[ClientArrays], dtype: np.dtype | type = np.float64
) -> tuple[np.ndarray, _Layout]:
    """Stack the clients' models into a ``K x P`` matrix of ``dtype`` (and its layout)."""
    layout = _layout(clients)
    return _stack(clients, layout, dtype), layout


def _stack(
    clients: Sequence[ClientArrays],
    layout: _Layout,
    dtype: np.dtype | type,
    workspace: Workspace | None = None,
) -> np.ndarray:
    shape = (len(clients), layout.offsets[-1])
    matrix = np.empty(shape, dtype=dtype) if workspace is None else workspace.matrix(*shape, dtype)
    for row, (arrays, _) in enumerate(clients):
        for j, key in enumerate(layout.keys):
            matrix[row, layout.offsets[j] : layout.offsets[j + 1]] = np.ravel(arrays[key])
    return matrix


def unflatten(vector: np.ndarray, layout: _Layout) -> dict[str, np.ndarray]:
    """Split a flat vector back into named arrays with the layout's shapes and dtypes."""
    out: dict[str, np.ndarray] = {}
    for j, key in enumerate(layout.keys):
        part = vector[layout.offsets[j] : layout.offsets[j + 1]].reshape(layout.shapes[j])
        dtype = layout.dtypes[j]
        if not np.issubdtype(dtype, np.floating) and not np.issubdtype(dtype, np.complexfloating):
            part = np.rint(part)
        out[key] = np.array(part, dtype=dtype, order="C")  # keeps 0-d shapes
    return out


def client_distances(
    clients: Sequence[Mapping[str, np.ndarray]], center: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Euclidean distance (float64, over all arrays of ``center``) of each client model
    to ``center``, accumulated array by array (no ``K x P`` matrix)."""
    sq = np.zeros(len(clients), dtype=np.float64)
    for key, value in center.items():
        c = np.asarray(value, dtype=np.float64)
        for i, arrays in enumerate(clients):
            diff = np.asarray(arrays[key], dtype=np.float64) - c
            sq[i] += float(np.vdot(diff, diff))
    return np.sqrt(sq)


def _result(
    matrix: np.ndarray,
    layout: _Layout,
    vector: np.ndarray,
    weights: np.ndarray,
    n: np.ndarray,
    iterations: int = 0,
    converged: bool = True,
) -> Aggregate:
    distances = np.linalg.norm(matrix - vector, axis=1)
    drift = float(n @ distances / n.sum())
    return Aggregate(unflatten(vector, layout), weights, distances, drift, iterations, converged)


def weighted_mean(clients: Sequence[ClientArrays]) -> Aggregate:
    """FedAvg: ``theta = sum_k n_k theta_k / sum_k n_k``."""
    n = _example_weights(clients)
    matrix, layout = flatten(clients)
    w = n / n.sum()
    return _result(matrix, layout, w @ matrix, w, n)


def drift_weighted_mean(clients: Sequence[ClientArrays], scale: float = 1.0) -> Aggregate:
    """Weighted mean that shrinks clients far from the consensus.

    ``w_k ∝ n_k exp(-d_k^2 / (2 tau^2))`` with ``d_k = ||theta_k - theta_bar||`` the
    distance to the example-weighted mean ``theta_bar`` and ``tau = scale * median_k d_k``.
    A client at the median distance keeps ``exp(-1/2) ≈ 61%`` of its FedAvg weight, one at
    three times the median ``exp(-4.5) ≈ 1%``. When ``tau`` is 0 (at least half the
    clients sit on the mean) the plain weighted mean is returned.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    n = _example_weights(clients)
    matrix, layout = flatten(clients)
    mean = (n / n.sum()) @ matrix
    d = np.linalg.norm(matrix - mean, axis=1)
    tau = scale * float(np.median(d))
    if tau <= 0.0:
        w = n / n.sum()
        return _result(matrix, layout, mean, w, n)
    logits = np.log(np.where(n > 0, n, 1.0)) - d**2 / (2.0 * tau**2)
    logits = np.where(n > 0, logits, -np.inf)
    w = np.exp(logits - logits.max())
    w /= w.sum()
    return _result(matrix, layout, w @ matrix, w, n)


def geometric_median(
    clients: Sequence[ClientArrays],
    max_iter: int = MEDIAN_MAX_ITER,
    tol: float = MEDIAN_TOL,
    eps: float = 1e-8,
    workspace: Workspace | None = None,
) -> Aggregate:
    """Weighted geometric median: ``argmin_theta sum_k n_k ||theta - theta_k||``.

    This literally minimizes the (example-weighted) summed distance between the global
    model and the client models, i.e. the drift. Smoothed Weiszfeld iterations from the
    weighted mean: ``beta_k = n_k / max(eps, ||theta - theta_k||)``, ``theta <- sum_k
    beta_k theta_k / sum_k beta_k``, until the step is at most ``tol * max(1, ||theta||)``
    or ``max_iter`` steps were made (``converged`` tells which). ``workspace``: where to
    build the ``K x P`` matrix (see :class:`Workspace`; the result does not depend on it).
    """
    if max_iter < 0 or not tol >= 0 or not eps > 0:
        raise ValueError(f"need max_iter >= 0, tol >= 0, eps > 0 (got {max_iter}, {tol}, {eps})")
    n = _example_weights(clients)
    layout = _layout(clients)
    work = _work_dtype(layout)
    matrix = _stack(clients, layout, work, workspace)
    w = n / n.sum()
    # Work relative to the weighted mean c: Y = X - c (in place), u = theta - c. Then
    # ||theta - theta_k||^2 = ||Y_k||^2 - 2 Y_k.u + ||u||^2, so an iteration reads Y
    # twice (Y u, then w Y) and never builds a K x P temporary.
    center = w.astype(work) @ matrix
    matrix -= center
    scratch = np.empty(matrix.shape[1], dtype=np.float64)  # one float64 row, reused
    row_sq = np.array([_sq_norm(row, scratch) for row in matrix])
    u = np.zeros_like(center)
    converged, iterations = False, 0
    while iterations < max_iter:
        iterations += 1
        d = _distances(matrix, row_sq, u)
        beta = n / np.maximum(d, eps)
        w = beta / beta.sum()
        new = w.astype(work) @ matrix
        step = float(np.linalg.norm(new - u))
        u = new
        if step <= tol * max(1.0, float(np.linalg.norm(center + u))):
            converged = True
            break
    distances = _distances(matrix, row_sq, u)
    drift = float(n @ distances / n.sum())
    theta = center.astype(np.float64) + u
    return Aggregate(unflatten(theta, layout), w, distances, drift, iterations, converged)


def _sq_norm(vector: np.ndarray, scratch: np.ndarray | None = None) -> float:
    """``||v||^2`` accumulated in float64 (a float32 ``v`` is widened into ``scratch``,
    when given, instead of a fresh array)."""
    if vector.dtype == np.float64:
        v = vector
    elif scratch is not None:
        v = scratch[: vector.size]
        np.copyto(v, vector)
    else:
        v = vector.astype(np.float64)
    return float(v @ v)


def _distances(centered: np.ndarray, row_sq: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``||Y_k - u||`` for every row ``Y_k`` of ``centered`` (``row_sq`` = ``||Y_k||^2``)."""
    sq = row_sq - 2.0 * (centered @ u).astype(np.float64) + _sq_norm(u)
    return np.sqrt(np.maximum(sq, 0.0))


Aggregator = Callable[[Sequence[ClientArrays]], Aggregate]

AGGREGATIONS = ("mean", "drift-weighted", "geometric-median")
"""Names accepted by :func:`get_aggregator` (and FedGeo's ``aggregation``)."""


def get_aggregator(
    name: str,
    *,
    drift_scale: float = DRIFT_SCALE,
    max_iter: int = MEDIAN_MAX_ITER,
    tol: float = MEDIAN_TOL,
    eps: float = 1e-8,
    workspace: Workspace | None = None,
) -> Aggregator:
    """The aggregator called ``name`` with its settings bound (``workspace``: the
    geometric median's reusable matrix)."""
    if name == "mean":
        return weighted_mean
    if name == "drift-weighted":
        return lambda clients: drift_weighted_mean(clients, scale=drift_scale)
    if name == "geometric-median":
        return lambda clients: geometric_median(
            clients, max_iter=max_iter, tol=tol, eps=eps, workspace=workspace
        )
    raise ValueError(f"unknown aggregation {name!r}; valid: {', '.join(AGGREGATIONS)}")
