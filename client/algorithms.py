"""Client-side math of the federated algorithms, and the train-instruction contract.

All functions work on PyTorch tensors keyed by shared-parameter name (a dict, or the
``(name, tensor)`` pairs of ``NextLocationModel.shared_parameters()``). They plug into
``fedgeo.training.train_local`` hooks:

* FedProx / FedGeo anchoring: ``after_backward = lambda m: add_proximal_gradient(
  m.shared_parameters(), global_params, mu)`` (the gradient of ``proximal_term``);
* FedDyn: ``extra_loss = lambda m: feddyn_regularizer(m.shared_parameters(), global_params,
  grad_state, alpha)``, then after training ``grad_state = feddyn_update_state(...)``;
* SCAFFOLD: ``after_backward = lambda m: scaffold_correct_gradients(m.shared_parameters(),
  c_global, c_local)``, then ``c_local, delta = scaffold_update_control(...)`` and reply
  with ``delta`` as the ArrayRecord ``"control-delta"``.

Global tensors are treated as constants (detached). Formulas: docs/method.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, RecordDict

# Message contract: shared with the server through the library.
from fedgeo.message_keys import (  # noqa: F401 (re-exported)
    ARRAYS,
    CONFIG,
    CONTROL_DELTA,
    FEDDYN_ALPHA,
    LOCAL_ONLY,
    METRICS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    SCAFFOLD_CONTROL,
    SCAFFOLD_CONTROLS,
    SERVER_CONTROL,
    SERVER_ROUND,
    TRAIN_LOSS,
)

Tensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def _named(tensors: Tensors) -> dict[str, torch.Tensor]:
    return dict(tensors.items()) if isinstance(tensors, Mapping) else dict(tensors)


def _get(tensors: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"{what} has no entry '{key}'")
    return tensors[key]


@dataclass
class TrainInstructions:
    """What a train instruction asks the client to do, read from its content."""

    server_round: int = 0
    proximal_mu: float = 0.0
    """FedProx / FedGeo proximal weight (0: no proximal term)."""
    feddyn_alpha: float | None = None
    """FedDyn alpha (None: not FedDyn)."""
    local_only: bool = False
    """Train and keep the client's own full model; no federation."""
    server_control: dict[str, torch.Tensor] | None = None
    """SCAFFOLD server control variate c (None: not SCAFFOLD)."""
    scaffold_control: str = "auto"
    """SCAFFOLD's client control update: ``option-ii``, ``mean-gradient`` or ``auto``
    (option II with plain SGD, the mean raw gradient otherwise)."""

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainInstructions:
        """Parse a train instruction's ``RecordDict``."""
        config = content.get(CONFIG, {})
        control = content.get(SERVER_CONTROL)
        alpha = config.get(FEDDYN_ALPHA)
        return cls(
            server_round=int(config.get(SERVER_ROUND, 0)),
            proximal_mu=float(config.get(PROXIMAL_MU, 0.0)),
            feddyn_alpha=None if alpha is None else float(alpha),
            local_only=bool(int(config.get(LOCAL_ONLY, 0))),
            server_control=(
                dict(control.to_torch_state_dict()) if isinstance(control, ArrayRecord) else None
            ),
            scaffold_control=_scaffold_control(config),
        )

    @property
    def algorithm(self) -> str:
        """``"local"``, ``"scaffold"``, ``"feddyn"``, ``"proximal"`` or ``"plain"``."""
        if self.local_only:
            return "local"
        if self.server_control is not None:
            return "scaffold"
        if self.feddyn_alpha is not None:
            return "feddyn"
        if self.proximal_mu > 0:
            return "proximal"
        return "plain"


def _scaffold_control(config) -> str:
    value = str(config.get(SCAFFOLD_CONTROL, "auto"))
    if value not in SCAFFOLD_CONTROLS:
        raise ValueError(
            f"train config '{SCAFFOLD_CONTROL}' must be one of {', '.join(SCAFFOLD_CONTROLS)}, "
            f"got {value!r}"
        )
    return value


def proximal_term(params: Tensors, global_params: Tensors, mu: float) -> torch.Tensor:
    """FedProx: ``mu/2 * sum_k ||w_k - w_global_k||^2`` over the entries of ``params``
    (squared norm, as in Li et al. 2020). Differentiable in ``params``."""
    named, anchors = _named(params), _named(global_params)
    total = torch.zeros(())
    for key, w in named.items():
        g = _get(anchors, key, "global_params").detach().to(w.device, w.dtype)
        total = total.to(w.device) + (w - g).pow(2).sum()
    return 0.5 * float(mu) * total


def add_proximal_gradient(params: Tensors, global_params: Tensors, mu: float) -> None:
    """Add the gradient of :func:`proximal_term`, ``mu * (w - w_global)``, to each
    parameter's ``.grad`` in place: the same update as adding the term to the loss,
    without putting every shared parameter into the autograd graph at every step."""
    named, anchors = _named(params), _named(global_params)
    weights, grads, centres = [], [], []
    with torch.no_grad():
        for key, w in named.items():
            g = _get(anchors, key, "global_params").to(w.device, w.dtype)
            if w.grad is None:
                w.grad = float(mu) * (w - g)
            else:
                weights.append(w)
                grads.append(w.grad)
                centres.append(g)
        if weights:  # one fused call over all parameters (what torch's optimizers use)
            torch._foreach_add_(grads, torch._foreach_sub(weights, centres), alpha=float(mu))


def scaffold_correct_gradients(
    model_params: Tensors,
    c_global: Mapping[str, torch.Tensor],
    c_local: Mapping[str, torch.Tensor] | None,
) -> None:
    """SCAFFOLD, after ``backward()``: ``grad += c - c_i`` for every parameter with a
    gradient (``c_local`` None = zeros)."""
    with torch.no_grad():
        for key, p in _named(model_params).items():
            if p.grad is None:
                continue
            correction = _get(c_global, key, "c_global").to(p.grad.device, p.grad.dtype)
            if c_local is not None and key in c_local:
                correction = correction - c_local[key].to(p.grad.device, p.grad.dtype)
            p.grad.add_(correction)


def scaffold_update_control(
    c_local: Mapping[str, torch.Tensor] | None,
    c_global: Mapping[str, torch.Tensor],
    x_global: Mapping[str, torch.Tensor],
    y_local: Tensors,
    lr: float,
    steps: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """SCAFFOLD option II: ``c_i+ = c_i - c + (x - y_i) / (K * lr)``.

    ``x_global`` are the received global parameters, ``y_local`` the trained ones, ``K``
    the local optimizer steps and ``lr`` the local learning rate (the formula assumes
    plain SGD). Entries are those of ``y_local``. Returns ``(c_i+, Δc_i = c_i+ - c_i)``;
    with ``steps == 0`` (no local data) ``c_i`` is kept and ``Δc_i`` is zero.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")

    def option_two(key: str, y: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        c = _get(c_global, key, "c_global").detach().to(y.device, y.dtype)
        x = _get(x_global, key, "x_global").detach().to(y.device, y.dtype)
        return old - c + (x - y) / (steps * lr)

    return _new_controls(c_local, y_local, steps, option_two)


def _new_controls(
    c_local: Mapping[str, torch.Tensor] | None,
    y_local: Tensors,
    steps: int,
    value: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(c_i+, Δc_i)`` over the entries of ``y_local``, with ``c_i+ = value(key, y, c_i)``
    (``c_local`` None = zeros); with ``steps == 0`` ``c_i`` is kept and ``Δc_i`` is zero."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    new: dict[str, torch.Tensor] = {}
    delta: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, y in _named(y_local).items():
            y = y.detach()
            old = (
                c_local[key].detach().to(y.device, y.dtype)
                if c_local is not None and key in c_local
                else torch.zeros_like(y)
            )
            if steps == 0:
                new[key], delta[key] = old.clone(), torch.zeros_like(y)
                continue
            new[key] = value(key, y, old)
            delta[key] = new[key] - old
    return new, delta


def scaffold_accumulate_gradients(model_params: Tensors, sums: dict[str, torch.Tensor]) -> None:
    """SCAFFOLD, after ``backward()`` and before the correction: add each parameter's raw
    gradient to ``sums`` (created on first use)."""
    with torch.no_grad():
        for key, p in _named(model_params).items():
            if p.grad is None:
                continue
            if key in sums:
                sums[key].add_(p.grad)
            else:
                sums[key] = p.grad.detach().clone()


def scaffold_mean_gradient_control(
    c_local: Mapping[str, torch.Tensor] | None,
    gradient_sums: Mapping[str, torch.Tensor],
    y_local: Tensors,
    steps: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """SCAFFOLD's client control as the mean raw gradient along the local trajectory:
    ``c_i+ = (1/K) sum_k g_i(y_k)``, what option II computes under plain SGD, without
    assuming it (with Adam, ``(x - y_i) / (K lr)`` is about one per coordinate whatever the
    gradient). Entries are those of ``y_local`` (no gradient: zero); with ``steps == 0``
    ``c_i`` is kept. Returns ``(c_i+, Δc_i)``."""

    def mean_gradient(key: str, y: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        total = gradient_sums.get(key)
        return total.to(y.device, y.dtype) / steps if total is not None else torch.zeros_like(y)

    return _new_controls(c_local, y_local, steps, mean_gradient)


def feddyn_regularizer(
    params: Tensors,
    global_params: Tensors,
    grad_state: Mapping[str, torch.Tensor] | None,
    alpha: float,
) -> torch.Tensor:
    """FedDyn's loss terms ``-<g_i, theta> + alpha/2 ||theta - theta_global||^2`` summed
    over the entries of ``params`` (``grad_state`` None = zeros). Differentiable in
    ``params``."""
    named, anchors = _named(params), _named(global_params)
    total = torch.zeros(())
    for key, theta in named.items():
        g_global = _get(anchors, key, "global_params").detach().to(theta.device, theta.dtype)
        term = 0.5 * float(alpha) * (theta - g_global).pow(2).sum()
        if grad_state is not None and key in grad_state:
            term = term - (grad_state[key].detach().to(theta.device, theta.dtype) * theta).sum()
        total = total.to(theta.device) + term
    return total


def feddyn_update_state(
    grad_state: Mapping[str, torch.Tensor] | None,
    params: Tensors,
    global_params: Tensors,
    alpha: float,
) -> dict[str, torch.Tensor]:
    """FedDyn client state after a round: ``g_i <- g_i - alpha (theta_i - theta_global)``
    (``grad_state`` None = zeros)."""
    named, anchors = _named(params), _named(global_params)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, theta in named.items():
            theta = theta.detach()
            g = (
                grad_state[key].detach().to(theta.device, theta.dtype)
                if grad_state is not None and key in grad_state
                else torch.zeros_like(theta)
            )
            anchor = _get(anchors, key, "global_params").detach().to(theta.device, theta.dtype)
            out[key] = g - float(alpha) * (theta - anchor)
    return out
