"""Client-side algorithm math (FedProx, SCAFFOLD, FedDyn) and the instruction contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

import client.algorithms as algo
import server.strategies.contract as contract
from client.algorithms import (
    TrainInstructions,
    add_proximal_gradient,
    feddyn_regularizer,
    feddyn_update_state,
    proximal_term,
    scaffold_accumulate_gradients,
    scaffold_correct_gradients,
    scaffold_mean_gradient_control,
    scaffold_update_control,
)
from server.strategies import FedDyn, FedGeo, LocalOnly, Scaffold


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def leaf(*values: float) -> torch.Tensor:
    return t(*values).requires_grad_(True)


# --- FedProx -----------------------------------------------------------------------------


def test_proximal_term_value_and_gradient() -> None:
    w = {"a": leaf(1.0, 2.0), "b": leaf(-1.0)}
    g = {"a": t(0.0, 1.0), "b": t(1.0)}
    value = proximal_term(w, g, mu=0.5)
    assert float(value.detach()) == pytest.approx(0.25 * (1 + 1 + 4))
    value.backward()
    torch.testing.assert_close(w["a"].grad, 0.5 * t(1.0, 1.0))
    torch.testing.assert_close(w["b"].grad, 0.5 * t(-2.0))
    assert g["a"].grad is None


def test_proximal_gradient_hook_adds_the_terms_gradient() -> None:
    """The in-place hook used in training equals autograd on the proximal term."""
    g = {"a": t(0.0, 1.0), "b": t(1.0)}
    by_autograd = {"a": leaf(1.0, 2.0), "b": leaf(-1.0)}
    loss = (by_autograd["a"] ** 2).sum() + proximal_term(by_autograd, g, mu=0.5)
    loss.backward()
    by_hook = {"a": leaf(1.0, 2.0), "b": leaf(-1.0)}
    (by_hook["a"] ** 2).sum().backward()  # "b" gets no gradient from the loss
    add_proximal_gradient(by_hook, g, mu=0.5)
    for key in g:
        torch.testing.assert_close(by_hook[key].grad, by_autograd[key].grad)


def test_proximal_gradient_hook_is_bit_for_bit_the_per_tensor_update() -> None:
    """The fused hook gives exactly ``grad + mu * (w - g)`` tensor by tensor, so runs made
    before it was fused are reproduced bit for bit."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(300, 64), (64,), (3, 5, 7), ()]
    w = {f"p{i}": torch.randn(s, generator=gen).requires_grad_() for i, s in enumerate(shapes)}
    g = {k: v.detach() + 0.01 * torch.randn(v.shape, generator=gen) for k, v in w.items()}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in w.items()}
    for k, v in w.items():
        v.grad = grads[k].clone()
    add_proximal_gradient(w, g, mu=0.013)
    for k, v in w.items():
        expected = grads[k].clone().add_(v.detach() - g[k], alpha=0.013)
        assert torch.equal(v.grad, expected), k


def test_proximal_term_accepts_named_parameter_pairs() -> None:
    model = torch.nn.Linear(2, 1)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert proximal_term(model.named_parameters(), anchor, 1.0).detach().item() == 0.0
    with pytest.raises(ValueError, match="weight"):
        proximal_term(model.named_parameters(), {"bias": anchor["bias"]}, 1.0)


# --- SCAFFOLD ----------------------------------------------------------------------------


def test_scaffold_gradient_correction() -> None:
    p, q = leaf(1.0, 1.0), leaf(3.0)
    (p.sum() * 2 + 0 * q.sum()).backward()
    frozen = leaf(0.0)  # no grad: skipped
    scaffold_correct_gradients(
        {"p": p, "q": q, "frozen": frozen},
        c_global={"p": t(1.0, 2.0), "q": t(0.5), "frozen": t(9.0)},
        c_local={"p": t(0.5, 0.5), "q": t(0.0)},
    )
    torch.testing.assert_close(p.grad, t(2.5, 3.5))
    torch.testing.assert_close(q.grad, t(0.5))
    assert frozen.grad is None
    with pytest.raises(ValueError, match="c_global"):
        scaffold_correct_gradients({"p": p}, {}, None)


def test_scaffold_control_update_hand_case() -> None:
    new, delta = scaffold_update_control(
        c_local={"w": t(0.0, 1.0)},
        c_global={"w": t(1.0, 1.0)},
        x_global={"w": t(1.0, 2.0)},
        y_local={"w": t(0.5, 1.0)},
        lr=0.1,
        steps=5,
    )
    # c_i+ = c_i - c + (x - y) / (K lr) = [0, 1] - [1, 1] + [1, 2]
    torch.testing.assert_close(new["w"], t(0.0, 2.0))
    torch.testing.assert_close(delta["w"], t(0.0, 1.0))
    kept, zero = scaffold_update_control(None, {"w": t(1.0)}, {"w": t(1.0)}, {"w": t(3.0)}, 0.1, 0)
    torch.testing.assert_close(kept["w"], t(0.0))
    torch.testing.assert_close(zero["w"], t(0.0))
    with pytest.raises(ValueError, match="lr"):
        scaffold_update_control(None, {"w": t(1.0)}, {"w": t(1.0)}, {"w": t(1.0)}, 0.0, 1)


def test_scaffold_control_is_the_mean_raw_gradient_after_corrected_sgd() -> None:
    """With plain SGD, option II's c_i+ equals the client's average raw gradient."""
    a = t(0.3, -1.2)  # constant gradient of the linear loss <a, w>
    x = t(1.0, 1.0)
    c, c_i = {"w": t(0.2, 0.4)}, {"w": t(-0.1, 0.3)}
    w = x.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=0.05)
    for _ in range(7):
        opt.zero_grad()
        (a * w).sum().backward()
        scaffold_correct_gradients({"w": w}, c, c_i)
        opt.step()
    new, delta = scaffold_update_control(c_i, c, {"w": x}, {"w": w}, lr=0.05, steps=7)
    torch.testing.assert_close(new["w"], a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta["w"], a - c_i["w"], rtol=1e-5, atol=1e-5)


def test_scaffold_mean_gradient_control_with_adam_is_the_mean_raw_gradient() -> None:
    """With Adam, c_i+ is the mean of the raw (uncorrected) gradients along the steps,
    and equals option II's value when the optimizer is plain SGD."""
    target = t(0.5, -2.0)
    x = t(1.0, 1.0)
    c, c_i = {"w": t(0.2, 0.4)}, {"w": t(-0.1, 0.3)}
    for optimizer in ("adam", "sgd"):
        w = x.clone().requires_grad_(True)
        opt = (
            torch.optim.Adam([w], lr=0.05) if optimizer == "adam" else torch.optim.SGD([w], lr=0.05)
        )
        sums: dict[str, torch.Tensor] = {}
        raw = []
        for _ in range(5):
            opt.zero_grad()
            ((w - target) ** 2).sum().backward()  # gradient 2 (w - target) changes each step
            raw.append(w.grad.detach().clone())
            scaffold_accumulate_gradients({"w": w}, sums)
            scaffold_correct_gradients({"w": w}, c, c_i)
            opt.step()
        new, delta = scaffold_mean_gradient_control(c_i, sums, {"w": w}, steps=5)
        torch.testing.assert_close(new["w"], torch.stack(raw).mean(0))
        torch.testing.assert_close(delta["w"], new["w"] - c_i["w"])
        option_two, _ = scaffold_update_control(c_i, c, {"w": x}, {"w": w}, lr=0.05, steps=5)
        if optimizer == "sgd":
            torch.testing.assert_close(new["w"], option_two["w"], rtol=1e-5, atol=1e-5)
        else:  # Adam's steps are about lr each: option II would read ~1 per coordinate
            assert not torch.allclose(new["w"], option_two["w"], atol=0.1)
    kept, zero = scaffold_mean_gradient_control(c_i, {}, {"w": x}, steps=0)
    assert torch.equal(kept["w"], c_i["w"]) and torch.equal(zero["w"], torch.zeros(2))


# --- FedDyn ------------------------------------------------------------------------------


def test_feddyn_regularizer_value_and_gradient() -> None:
    theta = {"w": leaf(2.0, -1.0)}
    anchor = {"w": t(1.0, 1.0)}
    g = {"w": t(0.5, 2.0)}
    value = feddyn_regularizer(theta, anchor, g, alpha=0.4)
    # -<g, theta> + alpha/2 ||theta - anchor||^2 = -(1 - 2) + 0.2 * (1 + 4)
    assert float(value.detach()) == pytest.approx(1.0 + 1.0)
    value.backward()
    # gradient: -g + alpha (theta - anchor)
    torch.testing.assert_close(theta["w"].grad, t(-0.5 + 0.4, -2.0 - 0.8))
    assert float(feddyn_regularizer(theta, anchor, None, alpha=0.4).detach()) == pytest.approx(1.0)


def test_feddyn_state_update_hand_case() -> None:
    new = feddyn_update_state({"w": t(0.5, 2.0)}, {"w": t(2.0, -1.0)}, {"w": t(1.0, 1.0)}, 0.4)
    torch.testing.assert_close(new["w"], t(0.5 - 0.4, 2.0 + 0.8))
    first = feddyn_update_state(None, {"w": t(2.0)}, {"w": t(1.0)}, 0.5)
    torch.testing.assert_close(first["w"], t(-0.5))


# --- message contract --------------------------------------------------------------------


def test_client_and_server_agree_on_keys() -> None:
    names = [
        "ARRAYS",
        "CONFIG",
        "METRICS",
        "NUM_EXAMPLES",
        "TRAIN_LOSS",
        "SERVER_ROUND",
        "PROXIMAL_MU",
        "FEDDYN_ALPHA",
        "LOCAL_ONLY",
        "SERVER_CONTROL",
        "CONTROL_DELTA",
    ]
    for name in names:
        assert getattr(algo, name) == getattr(contract, name), name


class _Nodes(Grid):
    def __init__(self, nodes: list[int]) -> None:
        self._nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    set_run = create_message = push_messages = pull_messages = send_and_receive = None
    run = None


def test_instructions_parsed_from_real_strategy_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    grid = _Nodes([1, 2])
    arrays = ArrayRecord({"w": Array(np.ones(2, np.float32))})

    def first(strategy) -> TrainInstructions:
        messages = list(strategy.configure_train(4, arrays, ConfigRecord(), grid))
        return TrainInstructions.from_content(messages[0].content)

    scaffold = first(Scaffold())
    assert scaffold.algorithm == "scaffold" and scaffold.server_round == 4
    torch.testing.assert_close(scaffold.server_control["w"], torch.zeros(2))
    dyn = first(FedDyn(alpha=0.3))
    assert dyn.algorithm == "feddyn" and dyn.feddyn_alpha == pytest.approx(0.3)
    prox = first(FedGeo(proximal_mu=0.2))
    assert prox.algorithm == "proximal" and prox.proximal_mu == pytest.approx(0.2)
    assert first(FedGeo(proximal_mu=0.0)).algorithm == "plain"
    assert first(LocalOnly()).algorithm == "local"


def test_scaffold_client_side_picks_the_control_update_from_the_optimizer() -> None:
    """Through the client's hooks (``scaffold-control = auto``): with Adam the reply's
    control is the mean raw gradient (finite, about the gradients' size); with SGD, or
    with Adam and ``option-ii`` forced, it is option II."""
    from client.algorithms import TrainInstructions
    from client.local_training import client_side
    from fedgeo.data.loading import load_dataset
    from fedgeo.data.synthetic import SyntheticConfig
    from fedgeo.models import ModelConfig, build_model
    from fedgeo.training import TrainConfig, train_local

    dataset, _ = load_dataset(synthetic=SyntheticConfig(num_users=4, num_places=40, days=10))
    cfg = ModelConfig(embedding_dim=8, hidden_dim=8, window=4, history_scores=False).without_prior()
    controls = {}
    for optimizer, mode in (("adam", "auto"), ("sgd", "auto"), ("adam", "option-ii")):
        model, features = build_model(dataset.num_places, 1, cfg, seed=0)
        reference = model.state_dict()
        anchor = {k: v.clone() for k, v in model.shared_state().items()}
        zeros = {k: torch.zeros_like(v) for k, v in anchor.items()}
        instructions = TrainInstructions(server_control=zeros, scaffold_control=mode)
        side = client_side(instructions, anchor, {}, reference, 0.01, optimizer)
        train_cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, optimizer=optimizer, grad_clip=0)
        stats = train_local(
            model, features, dataset.users[:1], train_cfg, after_backward=side.after_backward
        )
        state, delta = side.finish(model, int(stats["steps"]))
        controls[optimizer, mode] = torch.as_tensor(state["scaffold.place_bias"])
        if optimizer == "sgd" or mode == "option-ii":  # option II: (x - y) / (K lr)
            moved = (anchor["place_bias"] - model.place_bias.detach()) / (stats["steps"] * 0.01)
            torch.testing.assert_close(controls[optimizer, mode], moved)
    adam = controls["adam", "auto"]
    # the place-bias gradient of a softmax is a difference of probabilities: |g| <= 1
    assert torch.isfinite(adam).all() and float(adam.abs().max()) <= 1.0
    assert float(adam.abs().sum()) > 0


def test_instructions_refuse_an_unknown_scaffold_control() -> None:
    from flwr.app import ConfigRecord, RecordDict

    from client.algorithms import TrainInstructions

    content = RecordDict({"config": ConfigRecord({"scaffold-control": "option-iii"})})
    with pytest.raises(ValueError, match="scaffold-control"):
        TrainInstructions.from_content(content)
    content = RecordDict({"config": ConfigRecord({"scaffold-control": "mean-gradient"})})
    assert TrainInstructions.from_content(content).scaffold_control == "mean-gradient"


# --- local learning rate schedule ---------------------------------------------------------


def test_local_learning_rate_decays_by_round_and_bad_decays_are_refused() -> None:
    from client.local_training import train_config
    from fedgeo.message_keys import SERVER_ROUND
    from server.run_config import RunConfig

    settings = RunConfig.from_mapping({"lr": 0.01, "lr-decay": 0.9}).train_settings()
    lrs = [train_config({**settings, SERVER_ROUND: r}, seed=0).lr for r in (1, 2, 11)]
    assert lrs == pytest.approx([0.01, 0.009, 0.01 * 0.9**10])
    plain = RunConfig.from_mapping({"lr": 0.01}).train_settings()
    assert train_config({**plain, SERVER_ROUND: 50}, seed=0).lr == 0.01
    for bad in (0.0, -0.5, 1.2):
        with pytest.raises(ValueError, match="lr-decay"):
            RunConfig.from_mapping({"lr-decay": bad})
