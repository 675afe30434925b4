"""The model zoo: every model behind one contract, chosen by ``model`` / ``--model``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model import SMALL, _prior, make_places, make_user
from tiny import NODES, TINY_RUN

from fedgeo.models import ModelConfig, SampleIndex, build_model
from fedgeo.models.config import MODELS
from fedgeo.training import TrainConfig, train_local


@pytest.mark.parametrize("name", MODELS)
def test_every_model_scores_all_places_from_any_history(name: str) -> None:
    places = make_places()
    user = make_user([0, 1, 2, 3, 1, 2, 3, 4, 5, 1])
    cfg = ModelConfig(**SMALL, architecture=name)
    coords = places.coordinates()
    model, features = build_model(len(places), 1, cfg, _prior(places), seed=3, coordinates=coords)
    again, _ = build_model(len(places), 1, cfg, _prior(places), seed=3, coordinates=coords)
    model.eval()
    again.eval()
    # Position 1: one check-in and a window of padding; position 8: a full window.
    batch = features.build(SampleIndex([user]), np.array([0, 0]), np.array([1, 8]))
    scores = model(batch)
    assert scores.shape == (2, len(places)) and torch.isfinite(scores).all()
    assert torch.equal(scores, again(batch))  # seeded
    shared, personal = model.shared_state(), model.personal_state()
    assert set(personal) == {"user_embedding.weight"} and not set(shared) & set(personal)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_learns_and_has_the_no_memory_regime(name: str) -> None:
    places = make_places()
    user = make_user([0, 1, 2, 3, 1, 2, 3, 4, 5, 1, 2, 3, 1, 2, 3, 1])
    cfg = ModelConfig(**SMALL, architecture=name, personal_memory=False)
    coords = places.coordinates()
    model, features = build_model(len(places), 1, cfg, _prior(places), seed=0, coordinates=coords)
    before = {k: v.clone() for k, v in model.shared_state().items()}
    train_local(model, features, [user], TrainConfig(epochs=3, batch_size=4, lr=0.01, seed=0))
    moved = [k for k, v in model.shared_state().items() if not torch.equal(v, before[k])]
    assert moved  # the shared weights carry what it learned
    assert "memory" not in features.build(SampleIndex([user]), np.array([0]), np.array([3]))


def test_the_memory_model_keeps_its_parameter_names() -> None:
    """Saved memory models (and checkpoints) load unchanged."""
    model, _ = build_model(12, 1, ModelConfig(**SMALL, prior_propagation=False, prior_score=False))
    names = set(model.state_dict())
    assert "gru.weight_ih_l0" in names and not any(n.startswith("encoder.") for n in names)
    assert ModelConfig.from_dict({k: v for k, v in ModelConfig().to_dict().items()
                                  if k != "architecture"}).architecture == "memory"  # fmt: skip


def test_an_unknown_model_is_a_one_line_error_with_the_valid_names(tmp_path, capsys) -> None:
    from fedgeo.cli.main import main

    for command in (["simulate", "--strategy", "fedavg"], ["centralized"]):
        status = main([*command, "--model", "rnn", "--out", str(tmp_path / command[0])])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1
        assert err[0].endswith("valid models: memory, lstm, transformer, flashback"), err


def test_simulate_runs_every_model_on_the_synthetic_city(tmp_path) -> None:
    from experiments.simulate_cli import simulate

    runs = [
        {**TINY_RUN, "model": name, "strategy": "fedavg", "num-rounds": 1,
         "out-dir": str(tmp_path / name)}
        for name in MODELS
    ]  # fmt: skip
    results = simulate(runs, NODES, 2, progress=False)
    for name, result in zip(MODELS, results, strict=True):
        assert result["config"]["model"] == name
        assert result["model"]["architecture"] == name
        assert result["test"]["samples"] > 0 and 0 <= result["test"]["acc@1"] <= 1


def test_flashback_weighs_past_states_by_time_and_distance() -> None:
    """Flashback's weights: the same hour a day earlier and a nearby place weigh most;
    the model needs the coordinates."""
    from fedgeo.models.encoders import FlashbackEncoder

    encoder = FlashbackEncoder(4, 3, 3)
    states = torch.eye(3)[None]  # hidden state i = unit vector i

    class Fixed(torch.nn.Module):  # hidden states fixed: look at the weighting alone
        def forward(self, x):
            return states, None

    encoder.rnn = Fixed()
    valid = torch.tensor([[True, True, True]])
    batch = {
        "window_gap_hours": torch.tensor([[24.0, 12.0, 0.0]]),
        "window_distance_km": torch.tensor([[0.0, 0.0, 0.0]]),
    }
    weights = encoder(torch.zeros(1, 3, 4), valid, batch)[0]
    assert weights[1] < 1e-6 < weights[0] < weights[2]  # half a day away: cos term 0
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    batch["window_distance_km"] = torch.tensor([[0.0, 0.0, 5.0]])
    assert encoder(torch.zeros(1, 3, 4), valid, batch)[0][2] < weights[2]  # farther: less
    with pytest.raises(ValueError, match="coordinates"):
        build_model(12, 1, ModelConfig(**SMALL, architecture="flashback", prior_propagation=False,
                                       prior_score=False))  # fmt: skip


def test_transformer_reads_time_intervals_and_distances() -> None:
    """The Transformer's inputs carry each check-in's time interval and distance to the
    last one: the same window with other intervals gives another state; it needs the
    coordinates."""
    from fedgeo.models.encoders import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(4, 3, 3).eval()
    x, valid = torch.randn(1, 3, 4), torch.tensor([[True, True, True]])
    near = {
        "window_gap_hours": torch.tensor([[2.0, 1.0, 0.0]]),
        "window_distance_km": torch.tensor([[0.5, 0.2, 0.0]]),
    }
    state = encoder(x, valid, near)
    assert not torch.allclose(
        state, encoder(x, valid, {**near, "window_gap_hours": near["window_gap_hours"] * 48})
    )
    far = {**near, "window_distance_km": torch.tensor([[30.0, 12.0, 0.0]])}
    assert not torch.allclose(state, encoder(x, valid, far))
    with pytest.raises(ValueError, match="coordinates"):
        build_model(12, 1, ModelConfig(**SMALL, architecture="transformer", prior_propagation=False,
                                       prior_score=False))  # fmt: skip
