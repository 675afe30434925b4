"""The simulation engine call and the Flower app's packaging for ``flwr run``."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

import pytest
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from flwr.simulation.run_simulation import _run_simulation
from ray import cloudpickle

from client.app import app, load_app
from experiments.engine import app_loader, run_engine

REPO = Path(__file__).resolve().parents[1]


def test_engine_function_takes_what_run_engine_passes() -> None:
    """flwr's engine function is not public API: an upgrade that renames what
    experiments/engine.py passes must fail here, not in the middle of a run."""
    parameters = inspect.signature(_run_simulation).parameters
    assert "_run_simulation" in inspect.getsource(run_engine)
    source = inspect.getsource(run_engine)
    passed = ["num_supernodes", "exit_event", "client_app", "server_app", "backend_name"]
    passed += ["backend_config", "verbose_logging"]
    for name in passed:
        assert name in parameters, name
        assert f"{name}=" in source, name


def test_flwr_runtime_install_takes_the_cpu_build_of_torch() -> None:
    """`flwr run .` installs the app's dependencies with uv: torch must come from
    PyTorch's CPU index (PyPI's Linux wheel pulls the CUDA packages)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    uv = pyproject["tool"]["uv"]
    [source] = uv["sources"]["torch"]
    index = {entry["name"]: entry for entry in uv["index"]}[source["index"]]
    assert index["url"] == "https://download.pytorch.org/whl/cpu"
    assert index["explicit"] is True  # nothing else is taken from that index
    assert "darwin" in source["marker"]  # macOS wheels on PyPI are CPU-only already
    constraints = (REPO / "constraints.txt").read_text(encoding="utf-8").split()
    assert "flwr==1.42.0" in constraints  # the engine function's signature is pinned


def test_workers_get_the_client_app_loader_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's Ray backend pickles its app loader with every node message: the loader
    the engine gives it must pickle as a name, load the same app, and be given only
    while the engine runs."""
    pickled = cloudpickle.dumps(load_app)
    assert len(pickled) < 200
    assert cloudpickle.loads(pickled)() is app
    assert len(cloudpickle.dumps(lambda: app)) > 10 * len(pickled)  # Flower's own closure

    given = []
    monkeypatch.setattr(RayBackend, "build", lambda self, app_fn: given.append(app_fn))
    flower_build = RayBackend.build
    with app_loader(load_app):
        RayBackend.build(object(), lambda: app)
    assert given == [load_app]
    assert RayBackend.build is flower_build
