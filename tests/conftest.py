"""Shared test fixtures: real-data locator, small-file writer, CLI runner."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# The test models are tiny: one intra-op thread is faster and avoids oversubscribing a
# 2-core CI machine when Ray workers or other processes run beside the tests.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
"""Real data sets for development (not shipped): ``../shared/data`` from the repo root."""
FIXTURES = Path(__file__).resolve().parent / "fixtures"
"""Small files committed with the tests (none may contain real data)."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: real data is not shipped with the repository")
    return SHARED_DATA


@pytest.fixture
def shared_file(shared_data: Path) -> Callable[[str], Path]:
    """``shared_file("foursquare-nyc/checkins.csv")``: a real data file, or skip."""

    def get(relative: str) -> Path:
        path = shared_data / relative
        if not path.is_file():
            pytest.skip(f"{path} not found: real data is not shipped with the repository")
        return path

    return get


@pytest.fixture
def fixtures_dir() -> Path:
    """The committed test-fixture folder."""
    return FIXTURES


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """``write_file(name, content, encoding="utf-8")``: write text or bytes under
    ``tmp_path`` and return the path."""

    def write(name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content if isinstance(content, bytes) else content.encode(encoding)
        path.write_bytes(data)
        return path

    return write


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``run_cli([...]) -> (status, stdout, stderr)`` through ``fedgeo.cli.main.main``.

    While some built-in command modules cannot be imported yet, only the importable
    ones are registered.
    """
    from fedgeo.cli import main as cli_main

    available = []
    for name in cli_main.BUILTIN_COMMANDS:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        available.append(name)
    monkeypatch.setattr(cli_main, "BUILTIN_COMMANDS", tuple(available))

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli_main.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages built outside a Flower run need a task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
