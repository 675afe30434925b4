"""A killed simulation resumes from its checkpoint and ends like an uninterrupted run.

``fedgeo simulate`` runs in a subprocess (its own process group, so Ray's processes are
in it too) on a tiny city written to a CSV file, plus one user with a single check-in
(the protocol drops that user: the federation has one client fewer and completes). Once
the checkpoint of round ``KILL_AFTER`` exists, the whole group gets SIGKILL; no process of
the run may survive. Then ``fedgeo simulate --resume`` with the same options and folder
continues after the checkpoint's round (no completed round is lost) and must end with
the model, per-round history and test metrics of an uninterrupted run.

Two starts of the simulation engine: the killed subprocess, and one in this process
that runs the uninterrupted reference and then the resumed run (the ``--resume`` goes
through the command line; the engine call is widened to run the reference first).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from procfs import marked_processes

from fedgeo.data.synthetic import SyntheticConfig, generate_city
from server.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
USERS = 6
ROUNDS = 8
KILL_AFTER = 2
SETTINGS = {
    "model-embedding-dim": 8,
    "model-hidden-dim": 8,
    "model-window": 6,
    "prior-k": 4,
    "batch-size": 16,
    "local-epochs": 3,
    "fraction-train": 0.7,
    "eval-every": 2,
    "seed": 5,
}


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"--set={k}={v}" for k, v in SETTINGS.items()]
    return [
        "simulate",
        "--data",
        str(data),
        "--strategy",
        "fedgeo",
        "--rounds",
        str(ROUNDS),
        "--out",
        str(out),
        "--cpus",
        "2",
        "--no-progress",
        *sets,
        *extra,
    ]


def wait_for_checkpoint(out: Path, server_round: int, process: subprocess.Popen, limit: float):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) before round {server_round}")
        try:
            checkpoint = load_checkpoint(out)
        except (ValueError, EOFError, OSError):  # pragma: no cover - replaced atomically
            checkpoint = None
        if checkpoint is not None and checkpoint.server_round >= server_round:
            return checkpoint
        time.sleep(0.02)
    pytest.fail(f"no checkpoint of round {server_round} after {limit:g} s")


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    """A tiny city as a CSV file, plus a user with one check-in."""
    table = generate_city(SyntheticConfig(num_users=USERS, num_places=60, days=14, seed=1))
    table = table[["user_id", "location_id", "latitude", "longitude", "timestamp"]]
    solo = pd.DataFrame([table.iloc[0].to_dict() | {"user_id": 999}])
    path = tmp_path_factory.mktemp("kill") / "city.csv"
    pd.concat([table, solo]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def killed(city: Path, tmp_path_factory) -> dict:
    """Start the run, SIGKILL its process group after round ``KILL_AFTER``."""
    out = tmp_path_factory.mktemp("kill") / "run"
    marker = uuid.uuid4().hex
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "FEDGEO_TEST_MARKER": marker, "PYTHONPATH": path}
    process = subprocess.Popen(
        [sys.executable, "-m", "fedgeo.cli.main", *argv(city, out)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the driver, Ray, the workers
    )
    started = time.monotonic()
    try:
        wait_for_checkpoint(out, KILL_AFTER, process, limit=180)
        killed_at = time.monotonic() - started
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 20  # the kernel reaps the group's processes
        while marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = marked_processes(marker)
    finally:
        if process.poll() is None:  # the test failed before the kill: stop everything
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid in marked_processes(marker):  # never leave a process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return {
        "out": out,
        "status": process.returncode,
        "survivors": survivors,
        "checkpoint": load_checkpoint(out),
        "killed_at_s": killed_at,
    }


@pytest.fixture(scope="module")
def resumed(city: Path, killed: dict, tmp_path_factory) -> dict:
    """``fedgeo simulate --resume`` on the killed run's folder, with the uninterrupted
    reference run first in the same engine start."""
    import experiments.simulate_cli as simulate_cli
    from fedgeo.cli.main import build_parser, main

    reference_out = tmp_path_factory.mktemp("kill") / "reference"
    parsed = build_parser().parse_args(argv(city, reference_out))
    reference = simulate_cli.overrides_from_args(parsed)  # exactly what the command runs
    engine = simulate_cli.simulate
    ran: list[list[dict]] = []

    def reference_first(runs, *args, **kwargs):
        ran.append([reference, *runs])
        return engine([reference, *runs], *args, **kwargs)[1:]

    simulate_cli.simulate = reference_first
    try:
        status = main(argv(city, killed["out"], "--resume"))
    finally:
        simulate_cli.simulate = engine
    assert status == 0
    assert len(ran) == 1 and ran[0][1]["resume"] is True

    def read(out: Path) -> dict:
        return json.loads((out / "results.json").read_text(encoding="utf-8"))

    return {
        "resumed": read(killed["out"]),
        "reference": read(reference_out),
        "resumed_arrays": load_checkpoint(killed["out"]).arrays,
        "reference_arrays": load_checkpoint(reference_out).arrays,
    }


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find processes")
def test_sigkill_stops_every_process_and_keeps_the_last_checkpoint(killed):
    assert killed["status"] == -signal.SIGKILL
    assert killed["survivors"] == []  # Ray's processes died with the group
    checkpoint = killed["checkpoint"]
    assert KILL_AFTER <= checkpoint.server_round < ROUNDS  # killed mid-run
    assert [r["round"] for r in checkpoint.results["rounds"]] == list(
        range(1, checkpoint.server_round + 1)
    )
    assert "test" not in checkpoint.results  # the final test never ran


def test_resume_starts_after_the_last_completed_round(killed, resumed):
    results = resumed["resumed"]
    assert results["resumed_at"] == [killed["checkpoint"].server_round + 1]
    assert [r["round"] for r in results["rounds"]] == list(range(1, ROUNDS + 1))


def test_resumed_run_equals_an_uninterrupted_run(resumed):
    a, b = resumed["reference"], resumed["resumed"]
    assert a["resumed_at"] == []
    assert a["dataset"]["users"] == b["dataset"]["users"] == USERS  # the one-check-in user
    assert b["nodes"]["federated"] == USERS  # is dropped by the protocol, the run completes
    for x, y in zip(a["rounds"], b["rounds"], strict=True):
        assert x["participation"]["nodes"] == y["participation"]["nodes"]
        assert (x["replies"], x["failures"], x["rejected"]) == (y["replies"], 0, 0)
        assert x["train"] == pytest.approx(y["train"], abs=1e-6)
    assert [e["round"] for e in a["evaluation"]] == [e["round"] for e in b["evaluation"]]
    for x, y in zip(a["evaluation"], b["evaluation"], strict=True):
        assert x == pytest.approx(y, abs=1e-9)
    assert b["test"] == pytest.approx(a["test"], abs=1e-9) and b["test"]["samples"] > 0
    for key, value in resumed["reference_arrays"].items():
        np.testing.assert_array_equal(resumed["resumed_arrays"][key], value)
