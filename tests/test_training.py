"""Centralized training: reproducible, early stopping, beats popularity on the synthetic city."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedgeo.baselines import GlobalPopularity, evaluate_predictor
from fedgeo.centralized import run_centralized
from fedgeo.data.loading import load_dataset
from fedgeo.data.synthetic import SyntheticConfig
from fedgeo.models import ModelConfig, SampleIndex, build_model
from fedgeo.population import PopulationConfig
from fedgeo.training import TrainConfig, evaluate, fit, train_local

SMALL = dict(embedding_dim=16, hidden_dim=32, window=8, history_scores=False)


@pytest.fixture(scope="module")
def city():
    dataset, _ = load_dataset(synthetic=SyntheticConfig(num_users=40, num_places=150, days=30))
    return dataset


def _train(city, seed: int, epochs: int = 2):
    model, features = build_model(
        city.num_places, len(city.users), ModelConfig(**SMALL).without_prior(), None, seed=seed
    )
    cfg = TrainConfig(epochs=epochs, batch_size=128, seed=seed, patience=5)
    result = fit(model, features, city.users, cfg, progress=False)
    return model, features, result


def test_fit_is_reproducible_with_a_seed(city):
    m1, _, r1 = _train(city, seed=1)
    m2, _, r2 = _train(city, seed=1)
    m3, _, _ = _train(city, seed=2)
    for key, value in m1.state_dict().items():
        assert torch.equal(value, m2.state_dict()[key]), key
    assert r1.history[-1]["train_loss"] == r2.history[-1]["train_loss"]
    assert not torch.equal(m1.state_dict()["place_bias"], m3.state_dict()["place_bias"])


def test_early_stopping_restores_the_best_epoch(city):
    model, features, result = _train(city, seed=0, epochs=4)
    best = max(result.history, key=lambda r: r["val_mrr"])
    assert result.best_epoch == best["epoch"]
    val = evaluate(model, features, SampleIndex(city.users), "validation").metrics()
    assert val["mrr"] == pytest.approx(best["val_mrr"], abs=1e-9)


def test_checks_within_an_epoch_keep_the_best_check(city):
    model, features = build_model(
        city.num_places, len(city.users), ModelConfig(**SMALL).without_prior(), None, seed=0
    )
    cfg = TrainConfig(epochs=2, batch_size=64, seed=0, patience=10, checks_per_epoch=4)
    result = fit(model, features, city.users, cfg, progress=False)
    assert [r["epoch"] for r in result.history] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    best = max(result.history, key=lambda r: r["val_mrr"])
    assert result.best_epoch == best["epoch"] and result.epochs_run == 2
    val = evaluate(model, features, SampleIndex(city.users), "validation").metrics()
    assert val["mrr"] == pytest.approx(best["val_mrr"], abs=1e-9)


def test_validate_start_keeps_the_untrained_model_when_no_epoch_beats_it(city):
    """``validate_start``: the starting parameters are checked as epoch 0; a learning rate
    that wrecks the model leaves them as the model's parameters (best epoch 0)."""
    model, features = build_model(
        city.num_places, len(city.users), ModelConfig(**SMALL).without_prior(), None, seed=0
    )
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5.0, seed=0, validate_start=True)
    result = fit(model, features, city.users, cfg, progress=False)
    scores = [r["val_mrr"] for r in result.history]
    assert [r["epoch"] for r in result.history] == [0.0, 1, 2, 3]
    assert scores[0] > max(scores[1:]) and result.best_epoch == 0.0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, start[key], rtol=0, atol=0)


def test_patience_counts_checks_not_epochs(city):
    model, features = build_model(
        city.num_places, len(city.users), ModelConfig(**SMALL).without_prior(), None, seed=0
    )
    cfg = TrainConfig(epochs=50, batch_size=64, lr=0.05, seed=0, patience=2, checks_per_epoch=3)
    result = fit(model, features, city.users, cfg, progress=False)
    scores = [r["val_mrr"] for r in result.history]
    best_at = scores.index(max(scores))
    assert len(scores) == best_at + 1 + 2 < 50 * 3  # stopped two checks after the best
    assert result.epochs_run == -(-len(scores) // 3)
    with pytest.raises(ValueError, match="checks_per_epoch"):
        fit(model, features, city.users, TrainConfig(checks_per_epoch=0), progress=False)


def test_evaluate_ranks_new_place_targets_among_the_unvisited_places(city):
    model, features, _ = _train(city, seed=0, epochs=1)
    index = SampleIndex(city.users)
    ev = evaluate(model, features, index, "test", batch_size=7)  # batches split users
    assert ev.new_place.any() and not ev.new_place.all()
    model.eval()
    for i in range(len(ev.ranks)):
        user, p = city.users[ev.users[i]], int(ev.positions[i])
        visited = np.zeros(city.num_places, dtype=bool)
        visited[user.places[:p]] = True
        assert ev.new_place[i] == (not visited[ev.targets[i]])
        if not ev.new_place[i]:
            assert ev.new_place_ranks[i] == ev.ranks[i]
            continue
        with torch.no_grad():
            scores = model(features.build(index, ev.users[i : i + 1], ev.positions[i : i + 1]))[0]
        above = (scores >= scores[ev.targets[i]]).numpy()
        assert ev.new_place_ranks[i] == above[~visited].sum()
        assert ev.ranks[i] == above.sum()
    metrics = ev.metrics(breakdown=True)
    assert metrics["return-samples"] + metrics["new-samples"] == metrics["samples"]
    assert metrics["new-samples"] == int(ev.new_place.sum())
    assert set(ev.metrics()) == {"acc@1", "acc@5", "acc@10", "mrr", "ndcg@10", "samples"}


def test_train_local_counts_examples_and_changes_only_given_parameters(city):
    user = city.users[0]
    model, features = build_model(city.num_places, 1, ModelConfig(**SMALL).without_prior(), None)
    before = model.state_dict()["user_embedding.weight"].clone()
    shared = [p for _, p in model.shared_parameters()]
    stats = train_local(
        model, features, [user], TrainConfig(epochs=1, batch_size=16), params=shared
    )
    assert stats["num-examples"] == len(user.train)
    assert stats["steps"] == int(np.ceil(len(user.train) / 16))
    assert torch.equal(model.state_dict()["user_embedding.weight"], before)


def test_train_local_steps_with_the_optimizer_it_is_given(city):
    """A caller's optimizer replaces the one the config names: a zero-step SGD leaves
    every parameter where it was, and the step count is still reported."""
    user = city.users[0]
    model, features = build_model(city.num_places, 1, ModelConfig(**SMALL).without_prior(), None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_local(
        model, features, [user], TrainConfig(epochs=1, batch_size=16), optimizer=frozen
    )
    assert stats["steps"] == int(np.ceil(len(user.train) / 16))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_model_beats_popularity_on_the_synthetic_city():
    dataset, _ = load_dataset(synthetic=SyntheticConfig(num_users=60, num_places=200, days=40))
    popularity, *_ = evaluate_predictor(GlobalPopularity().fit(dataset), dataset, "test")
    summary = run_centralized(
        dataset,
        ModelConfig(**SMALL).without_prior(),
        TrainConfig(epochs=3, batch_size=128, seed=0),
    )
    assert summary["test"]["acc@1"] > popularity["acc@1"] + 0.2
    assert summary["test"]["mrr"] > 2 * popularity["mrr"]


def test_run_centralized_writes_metrics_and_predictions(tmp_path, city):
    run_centralized(
        city,
        ModelConfig(**SMALL).without_prior(),
        TrainConfig(epochs=1, batch_size=128),
        out_dir=tmp_path,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for split in ("test", "validation"):
        assert set(metrics[split]) >= {"acc@1", "acc@5", "acc@10", "mrr", "ndcg@10", "samples"}
    assert metrics["test"]["samples"] == city.num_samples("test")
    test = metrics["test"]
    assert test["return-samples"] + test["new-samples"] == test["samples"]  # the breakdown
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "user_id,target,rank"
    assert len(lines) - 1 == city.num_samples("test")


def test_run_centralized_with_the_population_prior_records_its_settings(tmp_path, city):
    config = ModelConfig(**SMALL, population_prior=True).without_prior()
    summary = run_centralized(
        city,
        config,
        TrainConfig(epochs=1, batch_size=128),
        out_dir=tmp_path,
        population=PopulationConfig(candidates=8, dp_epsilon=2.0),
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"]["population_prior"] is True
    assert metrics["population"]["candidates"] == 8
    assert metrics["population"]["dp_epsilon"] == 2.0
    assert summary["test"]["samples"] == city.num_samples("test")


def test_training_batches_use_the_training_memory_and_evaluation_the_past(city):
    """With ``training_memory = "leave-one-out"`` local training reads training batches
    (``build(..., training=True)``) and evaluation the past-only memory."""
    config = ModelConfig(**SMALL, training_memory="leave-one-out").without_prior()
    model, features = build_model(city.num_places, len(city.users), config, None, seed=0)
    seen: list[bool] = []
    build = features.build

    def spy(index, users, positions, *, training=False):
        seen.append(training)
        return build(index, users, positions, training=training)

    features.build = spy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, features, city.users[:3], TrainConfig(epochs=1, batch_size=16))
    assert seen and all(seen)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    seen.clear()
    evaluate(model, features, SampleIndex(city.users[:3]), "test")
    assert seen and not any(seen)


def test_place_lr_scale_slows_only_the_place_parameters(city):
    """``place_lr_scale = 0`` trains every parameter but the place embeddings and biases."""
    model, features = build_model(
        city.num_places, len(city.users), ModelConfig(**SMALL).without_prior(), None, seed=0
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=128, seed=0, place_lr_scale=0.0)
    fit(model, features, city.users, cfg, progress=False)
    after = model.state_dict()
    for name in ("place_embedding.weight", "place_bias"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["gru.weight_ih_l0"], after["gru.weight_ih_l0"])
    with pytest.raises(ValueError, match="place_lr_scale"):
        TrainConfig(place_lr_scale=-1.0)
