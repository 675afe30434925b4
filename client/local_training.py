"""What a client computes: its model, local training per strategy, evaluation, data profile.

Everything here runs on the client's own data and returns only shared arrays, scalar
metrics and the state to keep (see :mod:`client.state`). The model and the geographic
prior are built once per worker process; each instruction gets a model equal to a fresh
copy of it (the process's working copy, reset; see :func:`local_model`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from client.algorithms import (
    TrainInstructions,
    add_proximal_gradient,
    feddyn_regularizer,
    feddyn_update_state,
    scaffold_accumulate_gradients,
    scaffold_correct_gradients,
    scaffold_mean_gradient_control,
    scaffold_update_control,
)
from client.data_source import ClientSource
from client.state import select, with_prefix
from fedgeo.data.errors import TooLittleData
from fedgeo.data.partition import client_profile
from fedgeo.geo.prior import AdjacencyPrior, PriorConfig
from fedgeo.message_keys import MODEL_CONFIG, PRIOR_CHECKSUM, PRIOR_CONFIG, SERVER_ROUND
from fedgeo.models import FeatureBuilder, ModelConfig, NextLocationModel, SampleIndex, build_model
from fedgeo.training import Evaluation, TrainConfig, evaluate, train_local

PROFILE_KEYS = ("checkins", "distinct_places", "entropy", "radius_of_gyration_km")
"""The data profile a client reports (all scalars)."""


class PriorMismatch(ValueError):
    """The client's geographic prior is not the one the server built."""


@dataclass
class LocalModel:
    """The model for this client (equal to a fresh copy), with its feature builder."""

    model: NextLocationModel
    features: FeatureBuilder
    source: ClientSource

    @property
    def users(self) -> list:
        return [self.source.data.user]


def client_seed(seed: int, server_round: int, client_key: int) -> int:
    """The client's training seed: a function of (run seed, round, client) only."""
    words = np.random.SeedSequence([int(seed), int(server_round), int(client_key)])
    return int(words.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


_PRIORS: dict[tuple[str, str], AdjacencyPrior] = {}
_TEMPLATES: dict[tuple[str, str, str], tuple[NextLocationModel, FeatureBuilder]] = {}
_CACHE_SIZE = 4


def _cached(cache: dict, key: tuple, build):
    """``cache[key]``, built on first use; the cache keeps its newest entries only."""
    if key not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = build()
    return cache[key]


def prior_for(source: ClientSource, prior_json: str) -> AdjacencyPrior:
    """The geographic prior of the client's public place table (built once per process)."""
    return _cached(
        _PRIORS,
        (source.places_key, prior_json),
        lambda: AdjacencyPrior.from_places(
            source.data.places, PriorConfig(**json.loads(prior_json))
        ),
    )


def local_model(source: ClientSource, config: Mapping[str, Any]) -> LocalModel:
    """The model the instruction describes, equal to a fresh copy of the process's
    template (valid until the next call), after checking the prior.

    Raises :class:`PriorMismatch` when the prior built from this client's public place
    table has another checksum than the server's (``prior-checksum``).
    """
    model_json = str(config.get(MODEL_CONFIG, "{}"))
    prior_json = str(config.get(PRIOR_CONFIG, "{}"))
    model_config = ModelConfig.from_dict(json.loads(model_json))
    prior = None
    if model_config.uses_prior:
        prior = prior_for(source, prior_json)
        expected = str(config.get(PRIOR_CHECKSUM, ""))
        checksum = _cached(_CHECKSUMS, (source.places_key, prior_json), prior.checksum)
        if checksum != expected:
            raise PriorMismatch(
                f"geographic prior checksum mismatch: server {expected!r}, this client "
                f"{checksum!r} (different public place table or prior settings)"
            )
    key = (source.places_key, model_json, prior_json)
    places = source.data.places
    template, features = _cached(
        _TEMPLATES,
        key,
        lambda: build_model(
            len(places), 1, model_config, prior, seed=0, coordinates=places.coordinates()
        ),
    )
    return LocalModel(_working_copy(key, template), features, source)


_CHECKSUMS: dict[tuple[str, str], str] = {}
"""The checksum of each prior the process built (a prior never changes)."""
_WORKING: dict[tuple[str, str, str], NextLocationModel] = {}
"""The process's working copy of each template, reused by one message after another."""


def _working_copy(key: tuple[str, str, str], template: NextLocationModel) -> NextLocationModel:
    """A model equal to a fresh copy of ``template``: the process's one working copy of
    it, with the template's parameter values copied back in, no gradients and the
    template's train/eval mode. A worker handles one message at a time, so the copy a
    message used is free again when the next one starts; reusing it spares a model's
    allocation per message. Buffers (the prior's matrix) are constants and shared."""
    model = _WORKING.get(key)
    if model is None:
        return _cached(_WORKING, key, lambda: copy.deepcopy(template))
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), template.parameters(), strict=True):
            mine.copy_(theirs)
            mine.grad = None
            mine.requires_grad_(theirs.requires_grad)
    model.train(template.training)
    return model


def _tensors(
    arrays: Mapping[str, Any], like: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Arrays (or tensors) as tensors; with ``like``, each in the dtype and shape of its
    counterpart (received arrays may come as float64, or a scalar as a 1-element vector)."""
    out = {}
    for key, value in arrays.items():
        if isinstance(value, torch.Tensor):
            tensor = value.detach().clone()
        else:
            tensor = torch.from_numpy(np.array(value, copy=True))
        if like is not None and key in like and tensor.numel() == like[key].numel():
            tensor = tensor.reshape(like[key].shape).to(like[key].dtype)
        out[key] = tensor
    return out


def prepare(
    local: LocalModel,
    global_arrays: Mapping[str, np.ndarray] | None,
    state: Mapping[str, np.ndarray],
    local_only: bool,
) -> None:
    """Load the model to use: the client's own full model (local-only, once it has one),
    else the global shared arrays plus the client's personal parameters."""
    reference = local.model.state_dict()
    own = select(state, "local")
    if local_only and own:
        local.model.load_state_dict(_tensors(own, reference), strict=False)
        return
    if global_arrays is not None:
        local.model.load_shared_state(_tensors(global_arrays, reference))
    personal = select(state, "personal")
    if personal:
        local.model.load_personal_state(_tensors(personal, reference))


@dataclass
class TrainOutcome:
    """A train round's results: what to send and what to keep."""

    arrays: dict[str, np.ndarray] | None
    """Trained shared arrays (None for local-only: nothing leaves the device)."""
    metrics: dict[str, int | float]
    control_delta: dict[str, np.ndarray] | None
    state: dict[str, np.ndarray]


def train_config(config: Mapping[str, Any], seed: int) -> TrainConfig:
    """The local optimization settings of a train instruction. The learning rate of
    round ``r`` is ``lr * lr-decay ** (r - 1)``."""
    decay = float(config.get("lr-decay", 1.0)) ** max(int(config.get(SERVER_ROUND, 1)) - 1, 0)
    return TrainConfig(
        epochs=int(config.get("local-epochs", 1)),
        batch_size=int(config.get("batch-size", 64)),
        lr=float(config.get("lr", 2e-3)) * decay,
        optimizer=str(config.get("optimizer", "adam")),
        weight_decay=float(config.get("weight-decay", 0.0)),
        grad_clip=float(config.get("grad-clip", 5.0)),
        seed=seed,
    )


@dataclass
class ClientSide:
    """A strategy's client side: loss and gradient hooks for ``train_local`` and what
    to do after training (``finish(model, steps)`` -> state updates, control delta)."""

    extra_loss: Callable[[NextLocationModel], torch.Tensor] | None = None
    after_backward: Callable[[NextLocationModel], None] | None = None
    finish: Callable[[NextLocationModel, int], tuple[dict, dict | None]] | None = None


def client_side(
    instructions: TrainInstructions,
    anchor: dict[str, torch.Tensor],
    state: Mapping[str, np.ndarray],
    reference: Mapping[str, torch.Tensor],
    lr: float,
    optimizer: str,
) -> ClientSide:
    """The hooks of the instruction's algorithm (``anchor``: the received global
    arrays; ``reference``: the model's state dict, for dtypes and shapes; ``optimizer``:
    the local optimizer, which picks SCAFFOLD's control update)."""
    algorithm = instructions.algorithm
    if algorithm == "proximal":
        mu = instructions.proximal_mu
        return ClientSide(
            after_backward=lambda m: add_proximal_gradient(m.shared_parameters(), anchor, mu)
        )
    if algorithm == "feddyn":
        alpha = float(instructions.feddyn_alpha)
        g = _tensors(select(state, "feddyn"), reference) or None

        def finish_feddyn(m: NextLocationModel, steps: int) -> tuple[dict, None]:
            new_g = feddyn_update_state(g, m.shared_parameters(), anchor, alpha)
            return with_prefix("feddyn", new_g), None

        return ClientSide(
            extra_loss=lambda m: feddyn_regularizer(m.shared_parameters(), anchor, g, alpha),
            finish=finish_feddyn,
        )
    if algorithm == "scaffold":
        c_global = _tensors(instructions.server_control, reference)
        c_local = _tensors(select(state, "scaffold"), reference) or None

        mode = instructions.scaffold_control
        option_two = mode == "option-ii" or (mode == "auto" and optimizer == "sgd")
        sums: dict[str, torch.Tensor] = {}

        def correct(m: NextLocationModel) -> None:
            if not option_two:
                scaffold_accumulate_gradients(m.shared_parameters(), sums)
            scaffold_correct_gradients(m.shared_parameters(), c_global, c_local)

        def finish_scaffold(m: NextLocationModel, steps: int) -> tuple[dict, dict]:
            if option_two:  # as in the paper (exact under plain SGD)
                c_new, delta = scaffold_update_control(
                    c_local, c_global, anchor, m.shared_parameters(), lr, steps
                )
            else:
                c_new, delta = scaffold_mean_gradient_control(
                    c_local, sums, m.shared_parameters(), steps
                )
            return with_prefix("scaffold", c_new), {
                k: v.detach().cpu().numpy() for k, v in delta.items()
            }

        return ClientSide(after_backward=correct, finish=finish_scaffold)
    return ClientSide()  # plain and local-only training


def check_trainable(local: LocalModel) -> None:
    """Raise :class:`~fedgeo.data.errors.TooLittleData` when the client's user has no
    training sample (the message says how many check-ins it holds)."""
    user = local.source.data.user
    if len(user.train) == 0:
        checkins = len(user)
        raise TooLittleData(
            f"too little data to train: 0 training samples ({checkins} "
            f"check-in{'s' if checkins != 1 else ''})"
        )


def train(
    local: LocalModel,
    global_arrays: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    instructions: TrainInstructions,
    cfg: TrainConfig,
) -> TrainOutcome:
    """One round of local training with the strategy's client side.

    FedProx/FedGeo add the proximal term, FedDyn its regularizer (and update ``g_i``),
    SCAFFOLD corrects gradients with ``c - c_i`` (and updates ``c_i``); local-only
    trains the client's own model and sends no arrays.

    Raises :class:`~fedgeo.data.errors.TooLittleData` when the client has no training
    sample (the client then reports it and the server skips it).
    """
    check_trainable(local)
    prepare(local, global_arrays, state, instructions.local_only)
    model = local.model
    reference = model.state_dict()
    anchor = _tensors(global_arrays, reference)
    side = client_side(instructions, anchor, state, reference, cfg.lr, cfg.optimizer)
    metrics = train_local(
        model,
        local.features,
        local.users,
        cfg,
        extra_loss=side.extra_loss,
        after_backward=side.after_backward,
    )
    new_state = dict(state)
    control_delta = None
    if side.finish is not None:
        updates, control_delta = side.finish(model, int(metrics["steps"]))
        new_state.update(updates)
    arrays = None
    if instructions.local_only:
        new_state.update(with_prefix("local", model.state_dict()))
    else:
        new_state.update(with_prefix("personal", model.personal_state()))
        arrays = {k: v.cpu().numpy() for k, v in model.shared_state().items()}
    reply_metrics = {
        "num-examples": int(metrics["num-examples"]),
        "train-loss": float(metrics["train-loss"]),
        "steps": int(metrics["steps"]),
    }
    return TrainOutcome(arrays, reply_metrics, control_delta, new_state)


def evaluate_split(
    local: LocalModel,
    global_arrays: Mapping[str, np.ndarray] | None,
    state: Mapping[str, np.ndarray],
    split: str,
    local_only: bool,
) -> Evaluation:
    """Ranks of the client's own samples of ``split`` with the model it would use."""
    prepare(local, global_arrays, state, local_only)
    return evaluate(local.model, local.features, SampleIndex(local.users), split)


def data_profile(source: ClientSource) -> dict[str, float]:
    """The client's data profile (:data:`PROFILE_KEYS`), exact."""
    profile = client_profile(source.data.user, source.data.places)
    return {key: float(profile[key]) for key in PROFILE_KEYS}


def privatize(
    profile: Mapping[str, float],
    epsilon: float,
    radius_bound_km: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    """``epsilon``-LDP version of a profile (Laplace mechanism; see docs/federation.md).

    Neighbouring inputs differ in one check-in. Sensitivities: 1 for ``checkins`` and
    ``distinct_places``; the whole range for the bounded ``entropy`` ([0, 1]) and the
    clipped ``radius_of_gyration_km`` ([0, radius_bound_km]). The budget is split
    equally over the four values (each gets ``epsilon / 4``); results are clipped back
    to their ranges (post-processing keeps the guarantee).
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not radius_bound_km > 0:
        raise ValueError(f"radius bound must be > 0, got {radius_bound_km}")
    share = epsilon / len(PROFILE_KEYS)
    bounds = {
        "checkins": (1.0, 0.0, math.inf),
        "distinct_places": (1.0, 0.0, math.inf),
        "entropy": (1.0, 0.0, 1.0),
        "radius_of_gyration_km": (radius_bound_km, 0.0, radius_bound_km),
    }
    out = {}
    for key, (sensitivity, lo, hi) in bounds.items():
        value = min(max(float(profile[key]), lo), hi)
        noisy = value + rng.laplace(0.0, sensitivity / share)
        out[key] = float(min(max(noisy, lo), hi))
    return out
