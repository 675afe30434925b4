"""Build a model and its feature builder from a place table and a prior."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedgeo.models.config import ModelConfig
from fedgeo.models.features import FeatureBuilder
from fedgeo.models.next_location import NextLocationModel

if TYPE_CHECKING:
    from fedgeo.geo.prior import AdjacencyPrior
    from fedgeo.population import PopulationFeatures


def build_model(
    num_places: int,
    num_users: int,
    config: ModelConfig | None = None,
    prior: AdjacencyPrior | None = None,
    *,
    seed: int = 0,
    population: PopulationFeatures | None = None,
    coordinates: np.ndarray | None = None,
) -> tuple[NextLocationModel, FeatureBuilder]:
    """A seeded model and the matching feature builder.

    ``prior`` is required when any ``prior_*`` switch of ``config`` is on; the same
    prior (and seed) always gives the same initial parameters. ``population`` feeds the
    population score (``config.population_prior``); it can also be set later on the
    feature builder (``features.population``), as a federation does once it is built.
    ``coordinates`` (``(L, 2)`` latitude, longitude in degrees; ``Places.coordinates()``)
    are needed by the models that read distances (``config.needs_coordinates``).
    """
    import torch

    cfg = config or ModelConfig()
    if cfg.uses_prior and prior is None:
        raise ValueError("this model configuration uses the geographic prior: pass prior=")
    if prior is not None and prior.num_places != num_places:
        raise ValueError(f"prior has {prior.num_places} places, data has {num_places}")
    embedding = None
    if cfg.prior_init:
        from fedgeo.geo.embedding import spectral_embedding

        embedding = spectral_embedding(prior, cfg.embedding_dim, seed=seed)
    matrix = prior.torch_sparse() if (prior is not None and cfg.prior_propagation) else None
    torch.manual_seed(seed)
    model = NextLocationModel(num_places, num_users, cfg, matrix, embedding)
    features = FeatureBuilder(
        num_places, cfg, prior.matrix if prior is not None else None, population, coordinates
    )
    return model, features
