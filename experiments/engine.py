"""Flower's simulation engine, started in this process.

``flwr run`` on a simulation federation starts a ``flwr-simulation`` process whose
runtime (:func:`flwr.simulation.app.run_simulation_process`) hands the ServerApp and
ClientApp to the engine function :func:`flwr.simulation.run_simulation._run_simulation`
(Ray backend, one actor per CPU, virtual SuperNodes). ``fedgeo simulate`` and
``experiments.run`` call that same engine function directly, with app objects instead
of a FAB, so that a research script keeps its callbacks (progress bars, a traced grid,
several federations in one engine start). The public wrapper ``run_simulation`` is
deprecated in Flower 1.42 in favour of ``flwr run``; this module is the one place that
touches the engine, and flwr is pinned (constraints.txt) so that its signature is known
(tests/test_engine.py checks it).
"""

from __future__ import annotations

import os
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

BackendConfig = dict[str, dict[str, Any]]


def quiet_ray_environment() -> None:
    """Settings Ray reads at start: normal worker priority and today's GPU behaviour.

    Ray starts its workers at niceness 15; on a small machine anything else running
    would then starve the clients, so they run at normal priority unless the caller set
    ``RAY_worker_niceness``. ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` opts in to the
    behaviour Ray announces with a FutureWarning (a worker with no GPU leaves
    ``CUDA_VISIBLE_DEVICES`` alone), which silences the warning.
    """
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def run_engine(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_nodes: int,
    backend_config: BackendConfig,
    verbose: bool = False,
) -> None:
    """Run ``server_app`` against ``num_nodes`` virtual SuperNodes running ``client_app``
    until the ServerApp's main function returns. An exception in the ServerApp is raised
    here; the caller shuts Ray down."""
    quiet_ray_environment()
    _run_simulation(
        num_supernodes=num_nodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config,
        verbose_logging=verbose,
    )
