"""Training and evaluation loops shared by the centralized trainer and the clients."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgeo.data.dataset import UserData
from fedgeo.metrics import (
    MetricSums,
    breakdown_metrics,
    breakdown_sums,
    rank_new_places,
    ranks_from_scores,
)
from fedgeo.models.features import FeatureBuilder, SampleIndex
from fedgeo.models.next_location import PLACE_PARAMETERS, NextLocationModel


@dataclass
class TrainConfig:
    """Optimization settings (centralized training and local client training)."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    """``adam`` or ``sgd``."""
    momentum: float = 0.0
    """SGD momentum."""
    grad_clip: float = 5.0
    """Max gradient norm (0 disables clipping)."""
    patience: int = 3
    """Centralized: validation checks without an MRR gain before stopping."""
    checks_per_epoch: int = 1
    """Centralized: validation checks per epoch (each after an equal share of the
    epoch's shuffled samples); the model keeps the parameters of the best check."""
    place_lr_scale: float = 1.0
    """Centralized: learning-rate multiplier of the per-place parameters, the place
    embeddings and biases (:data:`~fedgeo.models.next_location.PLACE_PARAMETERS`). In a
    federation a place's parameters are trained only by the few clients that visit it and
    then averaged with everyone's unchanged copies, so they move far less per round than
    the shared gates; a multiplier below 1 gives pooled training the same balance."""
    validate_start: bool = False
    """Centralized: the starting parameters are a candidate too. They are validated before
    the first epoch, and the model keeps them when no check beats them (the untrained
    model, when training only costs accuracy on held-out users' days)."""
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "cpu"
    """Torch device for the model and batches (``cpu``, ``cuda``...)."""

    def __post_init__(self) -> None:
        if self.place_lr_scale < 0:
            raise ValueError(f"place_lr_scale must be >= 0, got {self.place_lr_scale!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    """Per-sample ranks of one split, with who and what they are."""

    ranks: np.ndarray
    users: np.ndarray
    """Index into the evaluated users list."""
    positions: np.ndarray
    targets: np.ndarray
    """Dense place index of each target."""
    new_place: np.ndarray
    """Whether each target is a place its user had not visited before (bool)."""
    new_place_ranks: np.ndarray
    """Rank of each target among the places its user had not visited (new places only;
    the overall rank elsewhere)."""

    @property
    def sums(self) -> MetricSums:
        return MetricSums.from_ranks(self.ranks)

    def breakdown_sums(self) -> dict[str, MetricSums]:
        """Sums of the return and the new-place samples (:func:`fedgeo.metrics.breakdown_sums`)."""
        return breakdown_sums(self.ranks, self.new_place_ranks, self.new_place)

    def metrics(self, breakdown: bool = False) -> dict[str, float]:
        """The metrics of every sample; with ``breakdown``, also the ``return-*`` and
        ``new-*`` metrics (docs/metrics.md)."""
        values = self.sums.finalize()
        if breakdown:
            values.update(breakdown_metrics(self.breakdown_sums()))
        return values


@dataclass
class FitResult:
    """What :func:`fit` did."""

    best_epoch: float
    """Epochs trained when validation peaked (``1.5``: half-way through the second)."""
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


LossHook = Callable[[nn.Module], torch.Tensor]
GradHook = Callable[[nn.Module], None]


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The model's parameters for the optimizer, the per-place ones at ``cfg.lr`` times
    ``cfg.place_lr_scale``."""
    named = list(model.named_parameters())
    place = [p for name, p in named if name in PLACE_PARAMETERS]
    rest = [p for name, p in named if name not in PLACE_PARAMETERS]
    return [{"params": rest}, {"params": place, "lr": cfg.lr * cfg.place_lr_scale}]


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (use 'adam' or 'sgd')")


def train_epoch(
    model: NextLocationModel,
    features: FeatureBuilder,
    index: SampleIndex,
    users: np.ndarray,
    positions: np.ndarray,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    rng: np.random.Generator,
    *,
    extra_loss: LossHook | None = None,
    after_backward: GradHook | None = None,
) -> tuple[float, int]:
    """One pass over the samples in a random order; returns (summed loss, steps)."""
    model.train()
    order = rng.permutation(len(users))
    total, steps = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        sel = order[start : start + cfg.batch_size]
        batch = features.build(index, users[sel], positions[sel], training=True)
        batch = _to_device(batch, cfg.device)
        scores = model(batch)
        loss = nn.functional.cross_entropy(scores, batch["target"])
        objective = loss + extra_loss(model) if extra_loss is not None else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if after_backward is not None:
            after_backward(model)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(sel)
        steps += 1
    return total, steps


@torch.no_grad()
def evaluate(
    model: NextLocationModel,
    features: FeatureBuilder,
    index: SampleIndex,
    split: str,
    batch_size: int = 512,
    device: str = "cpu",
) -> Evaluation:
    """Ranks of every sample of ``split`` among all places, and of each new-place target
    among the places its user had not visited."""
    model.eval()
    users, positions = index.samples(split)
    ranks = np.zeros(len(users), dtype=np.int64)
    targets = np.zeros(len(users), dtype=np.int64)
    new_place = np.zeros(len(users), dtype=bool)
    new_place_ranks = np.zeros(len(users), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        batch = features.build(index, users[sl], positions[sl])
        target = batch["target"].numpy()
        targets[sl] = target
        visited = _visited(index, users[sl], positions[sl], features.num_places)
        batch = _to_device(batch, device)
        scores = model(batch)
        ranks[sl] = ranks_from_scores(scores, batch["target"])
        new_place[sl], new_place_ranks[sl] = rank_new_places(
            scores, target, visited, ranks=ranks[sl]
        )
    return Evaluation(ranks, users, positions, targets, new_place, new_place_ranks)


def _visited(
    index: SampleIndex, users: np.ndarray, positions: np.ndarray, num_places: int
) -> np.ndarray:
    """Per sample, the places its user checked in at before it (read from the index's
    concatenated check-ins)."""
    visited = np.zeros((len(users), num_places), dtype=bool)
    for row, (user, p) in enumerate(zip(users, positions, strict=True)):
        start = index.offsets[user]
        visited[row, index.places[start : start + p]] = True
    return visited


def fit(
    model: NextLocationModel,
    features: FeatureBuilder,
    users: Sequence[UserData],
    cfg: TrainConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Centralized training with early stopping on validation MRR.

    Seeded by ``cfg.seed``; the model ends with its best validation parameters.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    index = SampleIndex(users)
    train_users, train_pos = index.samples("train")
    if len(train_users) == 0:
        raise ValueError("no training samples")
    has_validation = index.samples("validation")[0].size > 0
    optimizer = make_optimizer(parameter_groups(model, cfg), cfg)
    checks = cfg.checks_per_epoch
    if checks < 1:
        raise ValueError(f"checks_per_epoch must be >= 1, got {checks}")
    best_score, best_epoch, best_state, stale = -1.0, 0.0, None, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    if cfg.validate_start and has_validation:
        record = {"epoch": 0.0, **_validation_record(model, features, index, cfg)}
        history.append(record)
        if log is not None:
            log(_format_record(record))
        best_score, best_state = record["val_mrr"], copy.deepcopy(model.state_dict())
    bar = _progress(cfg.epochs, progress)
    epochs_run, stop = 0, False
    for epoch in range(1, cfg.epochs + 1):
        epochs_run = epoch
        # One share a check; with one check the epoch is one pass in a random order.
        shares = (
            [slice(None)]
            if checks == 1
            else np.array_split(rng.permutation(len(train_users)), checks)
        )
        for part, share in enumerate(shares, start=1):
            t0 = time.perf_counter()
            users, positions = train_users[share], train_pos[share]
            loss_sum, _ = train_epoch(model, features, index, users, positions, optimizer, cfg, rng)
            at = epoch if checks == 1 else round(epoch - 1 + part / checks, 4)
            record = {"epoch": at, "train_loss": loss_sum / max(len(users), 1)}
            if has_validation:
                record.update(_validation_record(model, features, index, cfg))
                score = record["val_mrr"]
            else:
                score = -record["train_loss"]
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            if log is not None:
                log(_format_record(record))
            if score > best_score:
                best_score, best_epoch, stale = score, record["epoch"], 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    stop = True
                    break
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_mrr=f"{score:.4f}")
        if stop:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(best_epoch, epochs_run, history, time.perf_counter() - started)


def train_local(
    model: NextLocationModel,
    features: FeatureBuilder,
    users: Sequence[UserData],
    cfg: TrainConfig,
    *,
    params: Sequence[nn.Parameter] | None = None,
    extra_loss: LossHook | None = None,
    after_backward: GradHook | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """Local training for ``cfg.epochs`` epochs (a client's round).

    ``extra_loss`` adds a regularizer to the loss (FedProx, FedDyn) and
    ``after_backward`` edits gradients (SCAFFOLD); ``optimizer`` replaces the one
    ``cfg`` names over ``params``. Returns ``num-examples``, ``train-loss`` (mean over
    the last epoch) and ``steps``.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    index = SampleIndex(users)
    train_users, train_pos = index.samples("train")
    if len(train_users) == 0:
        return {"num-examples": 0, "train-loss": float("nan"), "steps": 0}
    if optimizer is None:
        optimizer = make_optimizer(params if params is not None else model.parameters(), cfg)
    loss_sum, steps = 0.0, 0
    for _ in range(cfg.epochs):
        loss_sum, epoch_steps = train_epoch(
            model,
            features,
            index,
            train_users,
            train_pos,
            optimizer,
            cfg,
            rng,
            extra_loss=extra_loss,
            after_backward=after_backward,
        )
        steps += epoch_steps
    return {
        "num-examples": int(len(train_users)),
        "train-loss": loss_sum / len(train_users),
        "steps": steps,
    }


def _validation_record(
    model: NextLocationModel, features: FeatureBuilder, index: SampleIndex, cfg: TrainConfig
) -> dict[str, float]:
    """The validation metrics as ``val_<metric>`` entries of a history record."""
    val = evaluate(model, features, index, "validation", cfg.eval_batch_size, cfg.device)
    return {f"val_{k}": v for k, v in val.metrics().items() if k != "samples"}


def _to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    if device == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _format_record(record: dict[str, float]) -> str:
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
    )


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="epochs", unit="epoch", leave=False)
