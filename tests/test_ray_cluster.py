"""A simulation on a multi-node Ray cluster: head and worker started as separate
``ray start`` processes on this machine (one CPU each), ``fedgeo simulate --ray-address``
attached to it, clients on both nodes; the cluster stopped by pid afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from procfs import marked_processes
from tiny import TINY_RUN

from experiments.engine import ClusterError, connect_cluster

REPO = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray")
NODE_KEY = "FEDGEO_TEST_RAY_NODE"
"""Environment variable telling which node (head or worker) a process belongs to."""

pytestmark = [
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find processes"),
    pytest.mark.skipif(RAY is None, reason="needs the `ray` command (flwr[simulation])"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(marker: str, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "FEDGEO_TEST_MARKER": marker,
        "PYTHONPATH": path,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        **extra,
    }


def _fedgeo(args: list[str], marker: str, timeout: float) -> subprocess.CompletedProcess:
    """The ``fedgeo`` command in a process carrying ``marker``."""
    return subprocess.run(
        [sys.executable, "-m", "fedgeo.cli.main", *args],
        env=_env(marker),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{log.name}: no {text!r}:\n{log.read_text(errors='replace')[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group of a ``ray start --block``, SIGKILL after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A two-node Ray cluster on loopback: ``HOST:PORT`` of its head."""
    root = tmp_path_factory.mktemp("ray-cluster")
    marker = uuid.uuid4().hex
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    started: list[subprocess.Popen] = []
    try:
        for name, args in (
            ("head", ["--head", f"--port={port}", "--include-dashboard=false"]),
            ("worker", [f"--address={address}"]),
        ):
            log = root / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(RAY), "start", *args, *common],
                    env=_env(marker, **{NODE_KEY: name}),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started.append(process)
            _wait_for(log, "block forever", process, timeout=120)
        yield address
    finally:
        for process in reversed(started):  # the worker first, while its head still runs
            _stop(process)
        for pid in marked_processes(marker):  # anything the raylets left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _forget_cluster(port)
        time.sleep(1)
        assert marked_processes(marker) == []


def _forget_cluster(port: int) -> None:
    """Remove the address file ``ray start --head`` wrote (``ray stop`` would): left in
    place, it names the stopped cluster, and any later ``ray.init()`` without an address
    on this machine (Flower's Ray backend under ``flwr run``, say) waits for it forever."""
    from ray._private.utils import get_ray_address_file

    address_file = Path(get_ray_address_file(None))
    with contextlib.suppress(FileNotFoundError):
        if address_file.read_text().strip().endswith(f":{port}"):
            address_file.unlink()


def _nodes_of_client_actors(stop: threading.Event, seen: set[str]) -> None:
    """Collect the node names of the running ClientApp actors until ``stop``."""
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"ClientAppActor" not in (entry / "cmdline").read_bytes():
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(NODE_KEY.encode() + b"="):
                    seen.add(item.split(b"=", 1)[1].decode())
        stop.wait(0.2)


def test_simulation_runs_clients_on_both_nodes_of_a_ray_cluster(cluster: str, tmp_path: Path):
    marker = uuid.uuid4().hex
    out = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in TINY_RUN.items()]
    command = ["simulate", "--strategy", "fedavg", "--rounds", "1", "--out", str(out)]
    command += ["--no-progress", "--ray-address", cluster, *sets]
    seen: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_nodes_of_client_actors, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        done = _fedgeo(command, marker, timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["samples"] > 0 and len(results["rounds"]) == 1
    assert seen == {"head", "worker"}
    # The command leaves the cluster running and nothing of its own behind.
    assert marked_processes(marker) == []


def test_a_cluster_with_too_few_cpus_is_refused(cluster: str):
    with pytest.raises(ClusterError, match=r"has 2 CPU\(s\); each simulated client needs 3"):
        connect_cluster(cluster, cpus_per_client=3)
    import ray

    assert not ray.is_initialized()


def test_an_unreachable_ray_address_is_a_one_line_error(tmp_path: Path):
    marker = uuid.uuid4().hex
    command = ["simulate", "--strategy", "fedavg", "--rounds", "1", "--out", str(tmp_path)]
    command += ["--no-progress", "--ray-address", f"127.0.0.1:{_free_port()}"]
    command += [f"--set={k}={v}" for k, v in TINY_RUN.items()]
    done = _fedgeo(command, marker, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Ray cluster" in lines[0], done.stderr
    assert marked_processes(marker) == []
