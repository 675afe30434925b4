"""The centralized pipeline: prior, model, training, evaluation and result files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fedgeo.data.dataset import Dataset
from fedgeo.models import ModelConfig, SampleIndex, build_model
from fedgeo.population import (
    CandidateIndex,
    PopulationConfig,
    PopulationFeatures,
    PopulationPrior,
    plain_sum,
)
from fedgeo.results import write_metrics_json, write_predictions_csv
from fedgeo.training import TrainConfig, evaluate, fit


def run_centralized(
    dataset: Dataset,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    prior_k: int = 10,
    population: PopulationConfig | None = None,
    progress: bool = False,
    extra_timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train centrally, evaluate on validation and test; write files to ``out_dir``.

    Returns the metrics summary (``test``, ``validation``, ``timings_s``, ...).
    """
    timings = dict(extra_timings or {})
    t0 = time.perf_counter()
    from fedgeo.geo.prior import AdjacencyPrior, PriorConfig

    prior = (
        AdjacencyPrior.from_places(dataset.places, PriorConfig(k=prior_k))
        if model_config.uses_prior
        else None
    )
    timings["prior_s"] = time.perf_counter() - t0
    population_features = None
    if model_config.population_prior:
        population = population or PopulationConfig()
        population_features = build_population(
            dataset,
            population,
            seed=train_config.seed,
            day_blocks=model_config.population_day_blocks,
        )
    model, features = build_model(
        dataset.num_places,
        len(dataset.users),
        model_config,
        prior,
        seed=train_config.seed,
        population=population_features,
        coordinates=dataset.places.coordinates(),
    )
    model.to(train_config.device)
    result = fit(model, features, dataset.users, train_config, progress=progress)
    timings["train_s"] = result.seconds
    t1 = time.perf_counter()
    index = SampleIndex(dataset.users)
    batch, device = train_config.eval_batch_size, train_config.device
    val = evaluate(model, features, index, "validation", batch, device)
    test = evaluate(model, features, index, "test", batch, device)
    timings["evaluate_s"] = time.perf_counter() - t1
    summary: dict[str, Any] = {
        "method": "centralized",
        "test": test.metrics(breakdown=True),
        "validation": val.metrics(breakdown=True),
    }
    extra = {
        "method": "centralized",
        "dataset": dataset.name,
        "protocol": dataset.protocol,
        "model": model_config.to_dict(),
        "population": population.to_dict() if model_config.population_prior else None,
        "training": train_config.to_dict(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "history": result.history,
        "timings_s": timings,
    }
    summary.update(extra)
    if out_dir is not None:
        write_metrics_json(out_dir, test=summary["test"], validation=summary["validation"], **extra)
        user_ids = [dataset.users[i].user_id for i in test.users]
        targets = dataset.places.ids[test.targets]
        write_predictions_csv(out_dir, user_ids, targets, test.ranks)
    return summary


def build_population(
    dataset: Dataset, config: PopulationConfig, *, seed: int = 0, day_blocks: bool = False
) -> PopulationFeatures:
    """The population prior of all users, summed in one place (the federation sums the
    same vectors securely), with the DP noise of ``config`` drawn from ``seed``
    (``day_blocks``: with the visitors by block of the day)."""
    index = CandidateIndex(dataset.places, config.candidates, day_blocks)
    total = plain_sum(dataset.users, index, config)
    sigma = config.noise_std(releases=1, day_blocks=day_blocks)
    if sigma > 0:
        total = total + np.random.default_rng([seed, 0x504F50]).normal(0.0, sigma, total.shape)
    prior = PopulationPrior.from_sum(total, index, len(dataset.users))
    return PopulationFeatures(prior, index, config, dataset.users)
