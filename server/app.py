"""FedGeo's Flower ServerApp: prepare the federation, then run the round loop.

The server builds the geographic prior from the **public** place table (the data set's
place table in simulation, the ``places-path`` CSV in a deployment), initializes the
model with :func:`fedgeo.models.build_model` (seeded by the prior's spectral embedding)
and sends clients the prior's settings and checksum with every instruction, together
with the model configuration, the local-training settings and, for simulated clients,
the data set's description (``data-spec``). See docs/federation.md.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgeo.data.dataset import Dataset
from fedgeo.data.loading import load_spec
from fedgeo.data.places_io import read_places_csv
from fedgeo.geo.prior import AdjacencyPrior
from fedgeo.message_keys import (
    CLIENT_STATE_DIR,
    DATA_SPEC,
    LDP_EPSILON,
    LDP_RADIUS_KM,
    MODEL_CONFIG,
    POPULATION_CONFIG,
    PRIOR_CHECKSUM,
    PRIOR_CONFIG,
    RUN_KEY,
    SEED,
)
from fedgeo.models import build_model
from fedgeo.population import CandidateIndex
from server.loop import Federation, ProgressHook, Setup
from server.run_config import RunConfig


def simulation_dataset(config: RunConfig) -> Dataset:
    """The data set of a simulation (loaded once per process and data description)."""
    return load_spec(config.data_spec())


def prepare(config: RunConfig) -> Setup:
    """Public place table, prior, initial model and the instruction config."""
    dataset = None
    if config.places_path is not None:
        places = read_places_csv(config.places_path)
    else:
        dataset = simulation_dataset(config)
        places = dataset.places
    model_config = config.model
    prior = AdjacencyPrior.from_places(places, config.prior) if model_config.uses_prior else None
    model, _ = build_model(
        len(places), 1, model_config, prior, seed=config.seed, coordinates=places.coordinates()
    )
    arrays = {k: v.cpu().numpy() for k, v in model.shared_state().items()}
    prior_json = json.dumps(dataclasses.asdict(config.prior), sort_keys=True)
    instruction: dict[str, Any] = {
        SEED: config.seed,
        DATA_SPEC: config.data_spec().to_json(),
        MODEL_CONFIG: json.dumps(model_config.to_dict(), sort_keys=True),
        PRIOR_CONFIG: prior_json,
        PRIOR_CHECKSUM: prior.checksum() if prior is not None else "",
        RUN_KEY: config.run_key(),
        CLIENT_STATE_DIR: config.client_state_dir(),
        LDP_EPSILON: config.profile_ldp[0],
        LDP_RADIUS_KM: config.profile_ldp[1],
        **config.train_settings(),
    }
    describe: dict[str, Any] = {
        "places": len(places),
        "prior": {
            "checksum": instruction[PRIOR_CHECKSUM] or None,
            "config": json.loads(prior_json),
        },
        "model": model_config.to_dict(),
    }
    setup = Setup(config, arrays, instruction, describe=describe)
    if model_config.population_prior:
        setup.population_index = CandidateIndex(
            places, config.population.candidates, model_config.population_day_blocks
        )
        instruction[POPULATION_CONFIG] = json.dumps(config.population.to_dict(), sort_keys=True)
        describe["population"] = {"config": config.population.to_dict(), "releases": []}
    if dataset is not None:
        setup.expected_nodes = len(dataset.users)
        setup.user_ids = [u.user_id for u in dataset.users]
        setup.place_ids = dataset.places.ids
        describe["dataset"] = {
            "name": dataset.name,
            "users": len(dataset.users),
            "places": dataset.num_places,
            "samples": {s: dataset.num_samples(s) for s in ("train", "validation", "test")},
        }
    return setup


def run_server(
    grid: Grid,
    config: RunConfig,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    on_progress: ProgressHook | None = None,
) -> Federation:
    """Run one federation on ``grid`` with ``config``; return it (``.final_arrays``
    holds the final global arrays, results are in its out-dir)."""
    federation = make_federation(
        grid, config, on_round=on_round, stop=stop, on_progress=on_progress
    )
    federation.run()
    return federation


def make_federation(
    grid: Grid,
    config: RunConfig,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    on_progress: ProgressHook | None = None,
) -> Federation:
    """A federation on ``grid`` for ``config``, ready to run (or to step through, see
    :func:`server.loop.run_interleaved`)."""
    return Federation(grid, prepare(config), on_round=on_round, stop=stop, on_progress=on_progress)


def make_server_app(
    overrides: Mapping[str, Any] | None = None,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp whose run config is ``context.run_config`` (pyproject's
    ``[tool.flwr.app.config]`` and ``flwr run --run-config``) updated by ``overrides``,
    parsed once when the run starts."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = RunConfig.from_mapping({**dict(context.run_config), **dict(overrides or {})})
        run_server(grid, config, on_round=on_round, stop=stop)

    return server_app


app = make_server_app()
"""The ServerApp of ``flwr run .`` (pyproject: ``serverapp = "server.app:app"``)."""
