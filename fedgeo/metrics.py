"""Ranking metrics of next-location prediction, over ALL places.

The rank of a sample's target is ``1 + #{places other than the target scored >= the
target's score}``: a tie never favours the target (pessimistic ranking), so a model that
scores every place equally gets rank ``L`` (the number of places), not 1. A NaN score
counts as ``-inf`` for the other places; a NaN *target* score gets rank ``L``.

From the ranks ``r_i`` of ``n`` samples:

* ``acc@k``   = (1/n) * #{i : r_i <= k}                       (k = 1, 5, 10)
* ``mrr``     = (1/n) * sum_i 1 / r_i                         (untruncated)
* ``ndcg@10`` = (1/n) * sum_i [r_i <= 10] / log2(r_i + 1)     (one relevant place)

:class:`MetricSums` keeps the sums rather than the means, so the metrics of several
clients combine exactly (micro-average) by adding their sums.

**Return and new-place targets** (:func:`breakdown_sums`). A sample's target is a
*return* when the user checked in there before the sample, else a *new place*. The same
metrics are also reported per group, under a key prefix:

* ``return-*``: the return samples, with their ranks among all places (as above);
* ``new-*``: the new-place samples, each ranked among the places its user had **not**
  visited before it (``exclude`` of :func:`ranks_from_scores`): how well a model orders
  the places a user may explore, apart from how it weighs exploring against returning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

METRIC_KEYS = ("acc@1", "acc@5", "acc@10", "mrr", "ndcg@10", "samples")
"""Keys of :meth:`MetricSums.finalize` / :func:`compute_metrics`, in this order."""
RETURN_PREFIX = "return-"
"""Key prefix of the metrics of the samples whose target the user visited before."""
NEW_PLACE_PREFIX = "new-"
"""Key prefix of the metrics of the new-place samples (ranked among unvisited places)."""
BREAKDOWN_PREFIXES = (RETURN_PREFIX, NEW_PLACE_PREFIX)
BREAKDOWN_KEYS = tuple(prefix + key for prefix in BREAKDOWN_PREFIXES for key in METRIC_KEYS)
"""Keys of the return and new-place metrics (:func:`breakdown_metrics`), in this order."""


def _is_torch_tensor(x: Any) -> bool:
    # Avoid importing torch unless the caller already did (it is then in sys.modules).
    return type(x).__module__.split(".")[0] == "torch"


def ranks_from_scores(scores: Any, targets: Any, exclude: Any = None) -> np.ndarray:
    """Pessimistic 1-based rank of each target among all places.

    Parameters
    ----------
    scores : numpy array or torch tensor, shape ``(B, L)``
        Higher is better; any real dtype.
    targets : numpy array, torch tensor or sequence, shape ``(B,)``
        Dense place index of each sample's target, in ``[0, L)``.
    exclude : boolean array, shape ``(B, L)``, optional
        Places left out of each sample's ranking (never its target): the rank is then
        among the places not excluded, and a NaN target score ranks last among them.

    Returns
    -------
    numpy int64 array of shape ``(B,)`` with values in ``[1, L]``.
    """
    if _is_torch_tensor(scores):
        return _ranks_torch(scores, targets, exclude)
    s = np.asarray(scores)
    t = np.asarray(targets.cpu() if _is_torch_tensor(targets) else targets).astype(
        np.int64, copy=False
    )
    _check_shapes(s.shape, t.shape, t)
    if s.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.arange(s.shape[0])
    keep = None
    if exclude is not None:
        keep = ~np.asarray(exclude.cpu() if _is_torch_tensor(exclude) else exclude, dtype=bool)
        _check_exclude(keep, s.shape, rows, t)
    target_scores = s[rows, t]
    if np.issubdtype(s.dtype, np.floating):
        target_nan = np.isnan(target_scores)
        clean = np.where(np.isnan(s), -np.inf, s)
        target_scores = np.where(target_nan, -np.inf, target_scores)
    else:
        target_nan = np.zeros(s.shape[0], dtype=bool)
        clean = s
    # The target itself is always >= itself, so the count already includes the "+ 1".
    above = clean >= target_scores[:, None]
    if keep is None:
        ranks = above.sum(axis=1).astype(np.int64)
        ranks[target_nan] = s.shape[1]
        return ranks
    ranks = (above & keep).sum(axis=1).astype(np.int64)
    ranks[target_nan] = keep.sum(axis=1)[target_nan]
    return ranks


def _ranks_torch(scores: Any, targets: Any, exclude: Any = None) -> np.ndarray:
    import torch

    s = scores.detach()
    t = torch.as_tensor(targets, device=s.device).long()
    _check_shapes(tuple(s.shape), tuple(t.shape), t.cpu().numpy())
    if s.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    keep = None
    if exclude is not None:
        keep = ~torch.as_tensor(exclude, device=s.device).bool()
        rows = torch.arange(s.shape[0], device=s.device)
        _check_exclude(keep, tuple(s.shape), rows, t)
    target_scores = s.gather(1, t[:, None]).squeeze(1)
    if s.is_floating_point():
        target_nan = torch.isnan(target_scores)
        clean = torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)
        target_scores = torch.where(
            target_nan, torch.full_like(target_scores, -math.inf), target_scores
        )
    else:
        target_nan = torch.zeros_like(target_scores, dtype=torch.bool)
        clean = s
    above = clean >= target_scores[:, None]
    if keep is None:
        ranks = above.sum(dim=1)
        ranks = torch.where(target_nan, torch.full_like(ranks, s.shape[1]), ranks)
    else:
        ranks = torch.where(target_nan, keep.sum(dim=1), (above & keep).sum(dim=1))
    return ranks.cpu().numpy().astype(np.int64)


def _check_exclude(keep: Any, score_shape: tuple, rows: Any, targets: Any) -> None:
    if tuple(keep.shape) != tuple(score_shape):
        raise ValueError(
            f"exclude must have the scores' shape {tuple(score_shape)}, got {tuple(keep.shape)}"
        )
    target_kept = keep[rows, targets]
    if _is_torch_tensor(target_kept):
        target_kept = target_kept.cpu().numpy()
    if not np.all(target_kept):
        raise ValueError("exclude must not exclude a sample's own target")


def _check_shapes(score_shape: tuple, target_shape: tuple, targets: np.ndarray) -> None:
    if len(score_shape) != 2:
        raise ValueError(f"scores must be 2-D (samples, places), got shape {score_shape}")
    if target_shape != (score_shape[0],):
        raise ValueError(
            f"targets must have shape ({score_shape[0]},) to match scores {score_shape}, "
            f"got {target_shape}"
        )
    if len(targets) and (targets.min() < 0 or targets.max() >= score_shape[1]):
        raise ValueError(f"targets must be place indices in [0, {score_shape[1]})")


@dataclass(frozen=True)
class MetricSums:
    """Additive sufficient statistics of the ranking metrics of a set of samples."""

    count: int = 0
    hits1: int = 0
    hits5: int = 0
    hits10: int = 0
    rr_sum: float = 0.0
    """Sum of reciprocal ranks (untruncated)."""
    ndcg10_sum: float = 0.0
    """Sum of per-sample NDCG@10 = 1/log2(rank+1) if rank <= 10 else 0."""

    _DICT_KEYS = {
        "count": "count",
        "hits1": "hits@1",
        "hits5": "hits@5",
        "hits10": "hits@10",
        "rr_sum": "rr_sum",
        "ndcg10_sum": "ndcg@10_sum",
    }

    @classmethod
    def from_ranks(cls, ranks: Any) -> MetricSums:
        """Sums over 1-based ranks (any integer array-like; must be >= 1)."""
        r = np.asarray(ranks.cpu() if _is_torch_tensor(ranks) else ranks).reshape(-1)
        if r.size == 0:
            return cls()
        r = r.astype(np.int64)
        if r.min() < 1:
            raise ValueError("ranks are 1-based; got a rank below 1")
        top10 = r[r <= 10]
        return cls(
            count=int(r.size),
            hits1=int((r <= 1).sum()),
            hits5=int((r <= 5).sum()),
            hits10=int(top10.size),
            rr_sum=math.fsum((1.0 / r).tolist()),
            ndcg10_sum=math.fsum((1.0 / np.log2(top10 + 1.0)).tolist()),
        )

    def __add__(self, other: MetricSums) -> MetricSums:
        if not isinstance(other, MetricSums):
            return NotImplemented
        return MetricSums.total([self, other])

    @classmethod
    def total(cls, parts: Sequence[MetricSums]) -> MetricSums:
        """The sums of several sets of samples; float sums use ``math.fsum``, so the
        result does not depend on the order of ``parts``."""
        return cls(
            count=sum(p.count for p in parts),
            hits1=sum(p.hits1 for p in parts),
            hits5=sum(p.hits5 for p in parts),
            hits10=sum(p.hits10 for p in parts),
            rr_sum=math.fsum(p.rr_sum for p in parts),
            ndcg10_sum=math.fsum(p.ndcg10_sum for p in parts),
        )

    def __radd__(self, other: Any) -> MetricSums:
        # Lets sum([...]) start from 0.
        if other == 0:
            return self
        return self.__add__(other)

    def to_dict(self, prefix: str = "") -> dict[str, int | float]:
        """Flat scalar dict (what a Flower client reports); keys ``count``, ``hits@1``,
        ``hits@5``, ``hits@10``, ``rr_sum``, ``ndcg@10_sum``, each prefixed by ``prefix``."""
        return {prefix + self._DICT_KEYS[f.name]: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "") -> MetricSums:
        """Inverse of :meth:`to_dict`; raises ``KeyError`` naming a missing key."""
        values = {}
        for f in fields(cls):
            key = prefix + cls._DICT_KEYS[f.name]
            if key not in data:
                raise KeyError(f"metric sums need key {key!r}")
            values[f.name] = float(data[key]) if f.type == "float" else int(data[key])
        return cls(**values)

    def finalize(self, prefix: str = "") -> dict[str, float | int]:
        """Means: ``acc@1``, ``acc@5``, ``acc@10``, ``mrr``, ``ndcg@10`` and ``samples``
        (all zeros when there are no samples), each key prefixed by ``prefix``."""
        n = self.count
        if n == 0:
            values: dict[str, float | int] = {
                "acc@1": 0.0,
                "acc@5": 0.0,
                "acc@10": 0.0,
                "mrr": 0.0,
                "ndcg@10": 0.0,
                "samples": 0,
            }
        else:
            values = {
                "acc@1": self.hits1 / n,
                "acc@5": self.hits5 / n,
                "acc@10": self.hits10 / n,
                "mrr": self.rr_sum / n,
                "ndcg@10": self.ndcg10_sum / n,
                "samples": int(n),
            }
        return {prefix + key: value for key, value in values.items()}


def compute_metrics(ranks: Any) -> dict[str, float | int]:
    """Metrics of a set of 1-based ranks (see the module docstring)."""
    return MetricSums.from_ranks(ranks).finalize()


def visited_before(places: Any, positions: Any, num_places: int) -> np.ndarray:
    """``(len(positions), num_places)`` booleans: whether the user had checked in at each
    place before each sample position (``places`` is the user's time-ordered check-ins)."""
    seq = np.asarray(places, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    visited = np.zeros((len(pos), num_places), dtype=bool)
    for row, p in enumerate(pos):
        visited[row, seq[:p]] = True
    return visited


def rank_new_places(
    scores: Any, targets: Any, visited: np.ndarray, ranks: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(new_place, ranks)``: whether each target is a place not in ``visited`` (its
    user's places before the sample, :func:`visited_before`), and its rank among the places
    not visited (for a return target, its rank among all places).

    Only the new-place rows are ranked again; pass ``ranks``, the rows' ranks among all
    places (:func:`ranks_from_scores`), to reuse them for the return rows instead of
    ranking those too.
    """
    t = np.asarray(targets.cpu() if _is_torch_tensor(targets) else targets, dtype=np.int64)
    exclude = np.asarray(visited, dtype=bool)
    if ranks is not None and len(ranks) != len(t):
        raise ValueError(f"ranks has {len(ranks)} rows, targets {len(t)}")
    new_place = ~exclude[np.arange(len(t)), t]
    out = np.zeros(len(t), dtype=np.int64)
    new_rows, return_rows = np.flatnonzero(new_place), np.flatnonzero(~new_place)
    if len(new_rows):
        out[new_rows] = ranks_from_scores(
            _rows(scores, new_rows), t[new_rows], exclude=exclude[new_rows]
        )
    if len(return_rows):
        out[return_rows] = (
            ranks_from_scores(_rows(scores, return_rows), t[return_rows])
            if ranks is None
            else np.asarray(ranks, dtype=np.int64)[return_rows]
        )
    return new_place, out


def _rows(scores: Any, rows: np.ndarray) -> Any:
    """``scores[rows]`` for a numpy array or a torch tensor (on any device)."""
    if _is_torch_tensor(scores):
        import torch

        return scores[torch.as_tensor(rows, device=scores.device)]
    return np.asarray(scores)[rows]


def breakdown_sums(ranks: Any, new_place_ranks: Any, new_place: Any) -> dict[str, MetricSums]:
    """Sums of the return samples (their ranks among all places) under
    :data:`RETURN_PREFIX` and of the new-place samples (their ranks among the places the
    user had not visited) under :data:`NEW_PLACE_PREFIX`; ``new_place`` marks the
    new-place samples, ``new_place_ranks`` is read only where it is true."""
    new = np.asarray(new_place, dtype=bool).reshape(-1)
    all_ranks = np.asarray(ranks).reshape(-1)
    among_new = np.asarray(new_place_ranks).reshape(-1)
    if not (len(new) == len(all_ranks) == len(among_new)):
        raise ValueError(
            f"ranks, new_place_ranks and new_place differ in length: "
            f"{len(all_ranks)}, {len(among_new)}, {len(new)}"
        )
    return {
        RETURN_PREFIX: MetricSums.from_ranks(all_ranks[~new]),
        NEW_PLACE_PREFIX: MetricSums.from_ranks(among_new[new]),
    }


def breakdown_metrics(sums: Mapping[str, MetricSums]) -> dict[str, float | int]:
    """Prefixed means of :func:`breakdown_sums` (``return-acc@1``, ``new-mrr``, ...)."""
    out: dict[str, float | int] = {}
    for prefix, part in sums.items():
        out.update(part.finalize(prefix))
    return out
