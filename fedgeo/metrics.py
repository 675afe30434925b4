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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

METRIC_KEYS = ("acc@1", "acc@5", "acc@10", "mrr", "ndcg@10", "samples")
"""Keys of :meth:`MetricSums.finalize` / :func:`compute_metrics`, in this order."""


def _is_torch_tensor(x: Any) -> bool:
    # Avoid importing torch unless the caller already did (it is then in sys.modules).
    return type(x).__module__.split(".")[0] == "torch"


def ranks_from_scores(scores: Any, targets: Any) -> np.ndarray:
    """Pessimistic 1-based rank of each target among all places.

    Parameters
    ----------
    scores : numpy array or torch tensor, shape ``(B, L)``
        Higher is better; any real dtype.
    targets : numpy array, torch tensor or sequence, shape ``(B,)``
        Dense place index of each sample's target, in ``[0, L)``.

    Returns
    -------
    numpy int64 array of shape ``(B,)`` with values in ``[1, L]``.
    """
    if _is_torch_tensor(scores):
        return _ranks_torch(scores, targets)
    s = np.asarray(scores)
    t = np.asarray(targets.cpu() if _is_torch_tensor(targets) else targets).astype(
        np.int64, copy=False
    )
    _check_shapes(s.shape, t.shape, t)
    if s.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.arange(s.shape[0])
    target_scores = s[rows, t]
    if np.issubdtype(s.dtype, np.floating):
        target_nan = np.isnan(target_scores)
        clean = np.where(np.isnan(s), -np.inf, s)
        target_scores = np.where(target_nan, -np.inf, target_scores)
    else:
        target_nan = np.zeros(s.shape[0], dtype=bool)
        clean = s
    # The target itself is always >= itself, so the count already includes the "+ 1".
    ranks = (clean >= target_scores[:, None]).sum(axis=1).astype(np.int64)
    ranks[target_nan] = s.shape[1]
    return ranks


def _ranks_torch(scores: Any, targets: Any) -> np.ndarray:
    import torch

    s = scores.detach()
    t = torch.as_tensor(targets, device=s.device).long()
    _check_shapes(tuple(s.shape), tuple(t.shape), t.cpu().numpy())
    if s.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
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
    ranks = (clean >= target_scores[:, None]).sum(dim=1)
    ranks = torch.where(target_nan, torch.full_like(ranks, s.shape[1]), ranks)
    return ranks.cpu().numpy().astype(np.int64)


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
        return MetricSums(
            count=self.count + other.count,
            hits1=self.hits1 + other.hits1,
            hits5=self.hits5 + other.hits5,
            hits10=self.hits10 + other.hits10,
            rr_sum=self.rr_sum + other.rr_sum,
            ndcg10_sum=self.ndcg10_sum + other.ndcg10_sum,
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

    def finalize(self) -> dict[str, float | int]:
        """Means: ``acc@1``, ``acc@5``, ``acc@10``, ``mrr``, ``ndcg@10`` and ``samples``
        (all zeros when there are no samples)."""
        n = self.count
        if n == 0:
            return {
                "acc@1": 0.0,
                "acc@5": 0.0,
                "acc@10": 0.0,
                "mrr": 0.0,
                "ndcg@10": 0.0,
                "samples": 0,
            }
        return {
            "acc@1": self.hits1 / n,
            "acc@5": self.hits5 / n,
            "acc@10": self.hits10 / n,
            "mrr": self.rr_sum / n,
            "ndcg@10": self.ndcg10_sum / n,
            "samples": int(n),
        }


def compute_metrics(ranks: Any) -> dict[str, float | int]:
    """Metrics of a set of 1-based ranks (see the module docstring)."""
    return MetricSums.from_ranks(ranks).finalize()
