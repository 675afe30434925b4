"""The engine's local worker-process backend (experiments.process_backend): replies and
contexts as under Ray, a failing or dying client costs only its own message, no worker
outlives the engine, and a federation ends bit for bit as it does on Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import procfs
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from experiments.engine import run_engine
from experiments.process_backend import ProcessBackend
from experiments.simulate_cli import simulate

NODES = 6
RAISES, DIES = 2, 3  # partition ids whose first message fails

toy_client = ClientApp()


@toy_client.query()
def _count(message: Message, context: Context) -> Message:
    state = context.state.get("count", ConfigRecord({"n": 0}))
    state["n"] = int(state["n"]) + 1
    context.state["count"] = state
    partition = int(context.node_config["partition-id"])
    first = int(message.content["ask"]["round"]) == 0
    if first and partition == RAISES:
        raise ValueError("this node's data is broken")
    if first and partition == DIES:
        os._exit(3)
    reply = ConfigRecord(
        {"partition": partition, "n": int(state["n"]), "pid": os.getpid(),
         "threads": os.environ.get("OMP_NUM_THREADS", "")}
    )
    return Message(RecordDict({"reply": reply}), reply_to=message)


def load_toy_client() -> ClientApp:
    return toy_client


def _toy_server(rounds: list[list[Message]]) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + 60
        while len(list(grid.get_node_ids())) < NODES and time.monotonic() < deadline:
            time.sleep(0.1)
        nodes = sorted(grid.get_node_ids())
        for round_ in range(2):
            asks = [
                Message(RecordDict({"ask": ConfigRecord({"round": round_})}), dst_node_id=n,
                        message_type="query")
                for n in nodes
            ]
            rounds.append(list(grid.send_and_receive(asks, timeout=60)))

    return server


def test_process_backend_answers_and_survives_failing_clients() -> None:
    rounds: list[list[Message]] = []
    run_engine(_toy_server(rounds), toy_client, num_nodes=NODES, backend_config={},
               load_client_app=load_toy_client, processes=2)

    first, second = rounds
    assert len(first) == len(second) == NODES
    errors = {}
    answers: dict[int, ConfigRecord] = {}
    for reply in first:
        if reply.has_error():
            errors[reply.metadata.src_node_id] = reply.error.reason
        else:
            record = reply.content["reply"]
            answers[int(record["partition"])] = record
    assert len(errors) == 2  # the raising node and the dying node, nobody else
    reasons = " | ".join(errors.values())
    assert "this node's data is broken" in reasons
    assert "exited (code 3)" in reasons
    assert sorted(answers) == [p for p in range(NODES) if p not in (RAISES, DIES)]
    assert all(r["threads"] == os.environ.get("OMP_NUM_THREADS", "1") for r in answers.values())
    # The second round: every node answers; each node's context kept its count, and a
    # failed message left its node's context as it was.
    assert not any(reply.has_error() for reply in second)
    counts = {int(r.content["reply"]["partition"]): int(r.content["reply"]["n"]) for r in second}
    assert counts == {p: 1 if p in (RAISES, DIES) else 2 for p in range(NODES)}
    # Workers ran in other processes, a replacement took the dead one's place, and
    # none is left once the engine stopped.
    pids = {int(r.content["reply"]["pid"]) for r in [*second]} | {
        int(r["pid"]) for r in answers.values()
    }
    assert os.getpid() not in pids
    assert 2 <= len(pids) <= 3
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_process_backend_needs_a_loader_that_pickles_by_name() -> None:
    with pytest.raises(ValueError, match="module-level ClientApp loader"):
        ProcessBackend(2, lambda: toy_client)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ProcessBackend(0, load_toy_client)


def test_a_federation_ends_the_same_on_processes_and_on_ray(tmp_path: Path) -> None:
    def settings(out: Path) -> dict:
        return {"strategy": "fedgeo", "num-rounds": 2, "fraction-train": 0.5,
                "fraction-evaluate": 0.5, "out-dir": str(out),
                "client-state-dir": str(out / "client-state"), "research-mode": True}

    [on_processes] = simulate([settings(tmp_path / "p")], 12, 2, progress=False,
                              backend="process")
    [on_ray] = simulate([settings(tmp_path / "r")], 12, 2, progress=False, backend="ray")
    assert on_processes["test"] == on_ray["test"]
    assert json.dumps([r.get("evaluate") for r in on_processes["rounds"]]) == json.dumps(
        [r.get("evaluate") for r in on_ray["rounds"]]
    )
    assert (tmp_path / "p" / "predictions.csv").read_bytes() == (
        tmp_path / "r" / "predictions.csv"
    ).read_bytes()


def test_workers_exit_when_the_engine_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the process that runs the engine (say, the out-of-memory killer) leaves
    no worker behind: each sees its pipe close and exits."""
    script = (
        "import sys, time\n"
        "from client.app import load_app\n"
        "from experiments.process_backend import ProcessBackend\n"
        "if __name__ == '__main__':\n"
        "    backend = ProcessBackend(2, load_app)\n"
        "    backend.build(load_app)\n"
        "    print(' '.join(str(pid) for pid in backend.pids), flush=True)\n"
        "    time.sleep(300)\n"
    )
    path = tmp_path / "engine.py"
    path.write_text(script, encoding="utf-8")
    repo = Path(__file__).resolve().parents[1]
    pythonpath = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])
    engine = subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    try:
        pids = [int(p) for p in engine.stdout.readline().split()]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # running
    finally:
        engine.kill()
        engine.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(procfs.alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(procfs.alive(pid) for pid in pids)
