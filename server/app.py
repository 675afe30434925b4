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
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgeo.data.dataset import Dataset
from fedgeo.data.loading import load_dataset
from fedgeo.data.places_io import read_places_csv
from fedgeo.data.protocol import ProtocolConfig
from fedgeo.data.synthetic import SyntheticConfig
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


@lru_cache(maxsize=2)
def _dataset(
    path: Path | None,
    data_format: str,
    time_unit: str | None,
    protocol: ProtocolConfig,
    synthetic: SyntheticConfig | None,
) -> Dataset:
    if path is None:
        return load_dataset(None, protocol=protocol, synthetic=synthetic)[0]
    return load_dataset(path, data_format, time_unit=time_unit, protocol=protocol)[0]


def simulation_dataset(config: RunConfig) -> Dataset:
    """The data set of a simulation (loaded once per process and data description)."""
    return _dataset(
        config.data_path,
        str(config["data-format"]),
        config.time_unit,
        config.protocol,
        config.synthetic,
    )


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
    model, _ = build_model(len(places), 1, model_config, prior, seed=config.seed)
    arrays = {k: v.cpu().numpy() for k, v in model.shared_state().items()}
    prior_json = json.dumps(dataclasses.asdict(config.prior), sort_keys=True)
    instruction: dict[str, Any] = {
        SEED: config.seed,
        DATA_SPEC: config.data_spec(),
        MODEL_CONFIG: json.dumps(model_config.to_dict(), sort_keys=True),
        PRIOR_CONFIG: prior_json,
        PRIOR_CHECKSUM: prior.checksum() if prior is not None else "",
        RUN_KEY: config.run_key(),
        CLIENT_STATE_DIR: config.client_state_dir(),
        LDP_EPSILON: float(config["profile-ldp-epsilon"]),
        LDP_RADIUS_KM: float(config["profile-ldp-radius-km"]),
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
        setup.population_index = CandidateIndex(places, config.population.candidates)
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
    values: Mapping[str, Any],
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    on_progress: ProgressHook | None = None,
) -> Federation:
    """Run one federation on ``grid`` with the flat run config ``values``; return it
    (``.final_arrays`` holds the final global arrays, results are in its out-dir)."""
    federation = make_federation(
        grid, values, on_round=on_round, stop=stop, on_progress=on_progress
    )
    federation.run()
    return federation


def make_federation(
    grid: Grid,
    values: Mapping[str, Any],
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    on_progress: ProgressHook | None = None,
) -> Federation:
    """A federation on ``grid`` for the flat run config ``values``, ready to run (or to
    step through, see :func:`server.loop.run_interleaved`)."""
    setup = prepare(RunConfig.from_mapping(values))
    return Federation(grid, setup, on_round=on_round, stop=stop, on_progress=on_progress)


def make_server_app(
    overrides: Mapping[str, Any] | None = None,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp running with ``context.run_config`` updated by ``overrides``
    (``fedgeo simulate`` passes its options this way: ``run_simulation`` gives the
    ServerApp an empty run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(
            grid,
            {**dict(context.run_config), **dict(overrides or {})},
            on_round=on_round,
            stop=stop,
        )

    return server_app


app = make_server_app()
"""The ServerApp of ``flwr run .`` (pyproject: ``serverapp = "server.app:app"``)."""
