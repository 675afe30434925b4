"""A real Flower deployment on loopback: SuperLink with TLS and SuperNode authentication,
device agents with their own SQLite stores, a FedGeo run started with ``flwr run``.

The unit tests check the commands, certificates, node config and the device-side model
file without processes. The process tests share one SuperLink (module fixture) with a
self-signed CA, ``--enable-supernode-auth`` and a state database; every process they
start runs in its own session and is stopped (with all its descendants) at the end,
also when a test fails. Nothing touches ``~/.flwr``: the operator's ``flwr`` CLI and
the SuperLink use a temporary ``FLWR_HOME``, each agent its own folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import procfs
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from client.agent.device_state import AGENT_DIR, record_global_model
from client.agent.folder import AgentFolder
from client.agent.supernode import (
    NODE_CONFIG_FILE,
    node_config,
    supernode_command,
    supernode_env,
    write_node_config,
)
from client.data_source import (
    DATA_PATH,
    PLACES_PATH,
    STORE_PATH,
    client_source,
)
from client.state import KEEP_FILES
from fedgeo.cli.main import main as fedgeo_main
from fedgeo.data.errors import DataError
from fedgeo.data.places_io import read_places_csv, write_places_csv
from fedgeo.data.protocol import ProtocolConfig, preprocess
from fedgeo.data.synthetic import SyntheticConfig, generate_city
from fedgeo.models.portable import load_global_model
from server.certs import make_certificates
from server.deployment import (
    executable,
    register_keys,
    superlink_command,
    write_connection,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600.0
"""How long a deployment run may take before the test gives up. Every message starts a
``flwr-clientapp`` process, which imports torch and Flower (about 6 s each on a loaded
2-core machine), so a 4-round run can take several minutes; this is a liveness bound, not
a speed check."""
CONNECTION = "fedgeo-test"
AGENTS = 2
"""Registered agents that join the module's run (each message starts a ``flwr-clientapp``
process on each of them, so every one more costs a process start per message)."""

# ----------------------------------------------------------------------------------
# synthetic users and agents
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small synthetic city: the public place table and one CSV per user (the four
    users with the most check-ins)."""
    root = tmp_path_factory.mktemp("city")
    table = generate_city(SyntheticConfig(seed=3, num_users=8, num_places=60, days=30))
    dataset = preprocess(table, ProtocolConfig(min_user_checkins=0, min_place_checkins=0))
    places = write_places_csv(dataset.places, root / "places.csv")
    users = table["user_id"].value_counts().index[:4]
    files = []
    for user in users:
        path = root / f"user-{user}.csv"
        table[table["user_id"] == user].to_csv(path, index=False)
        files.append(path)
    return {"places": places, "users": files}


def _cli(*args: str) -> tuple[int, str]:
    """Run ``fedgeo ARGS`` in this process; (exit status, standard output)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = fedgeo_main(list(args))
    return status, out.getvalue()


def make_agent(root: Path, places: Path, checkins: Path) -> AgentFolder:
    """``fedgeo agent init`` + ``ingest``: an agent folder holding one user's store."""
    status, _ = _cli("agent", "init", "--dir", str(root), "--places", str(places))
    assert status == 0
    status, out = _cli("agent", "ingest", "--dir", str(root), str(checkins))
    assert status == 0, out
    return AgentFolder(root)


# ----------------------------------------------------------------------------------
# unit tests: commands, certificates, node config, device-side model file
# ----------------------------------------------------------------------------------


def test_certificates_cover_the_host_and_chain_to_the_ca(tmp_path: Path) -> None:
    paths = make_certificates(tmp_path / "certs", ["fedgeo.example.org", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"fedgeo.example.org", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert {"10.0.0.7", "127.0.0.1"} <= ips
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (paths.ca_key, paths.server_key):
        assert key.stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        make_certificates(tmp_path / "certs", ["other"])


def test_superlink_command_has_tls_auth_and_a_state_database(tmp_path: Path) -> None:
    paths = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    command = superlink_command(tmp_path / "certs", tmp_path / "state", port=9999)
    text = " ".join(command)
    assert f"--ssl-ca-certfile {paths.ca_cert.resolve()}" in text
    assert f"--ssl-certfile {paths.server_cert.resolve()}" in text
    assert f"--ssl-keyfile {paths.server_key.resolve()}" in text
    assert "--enable-supernode-auth" in command
    assert f"--database {(tmp_path / 'state' / 'superlink.db').resolve()}" in text
    assert "--disable-runtime-dependency-installation" in command
    assert "--insecure" not in command
    with pytest.raises(ValueError, match="TLS"):
        superlink_command(tmp_path / "certs", tmp_path / "state", extra_args=["--insecure"])
    with pytest.raises(DataError, match="server.key"):
        paths.server_key.unlink()
        superlink_command(tmp_path / "certs", tmp_path / "state")


def test_supernode_command_and_node_config(tmp_path: Path, city: dict) -> None:
    agent = make_agent(tmp_path / "agent", city["places"], city["users"][0])
    ca = tmp_path / "ca.crt"
    command = supernode_command(agent.root, "link.example.org:9093", ca, port=9200)
    assert command[command.index("--superlink") + 1] == "link.example.org:9093"
    assert command[command.index("--root-certificates") + 1] == str(ca.resolve())
    key = command[command.index("--auth-supernode-private-key") + 1]
    assert key == str(agent.private_key_path.resolve())
    assert command[command.index("--port") + 1] == "9200"
    assert "--insecure" not in command
    for forbidden in (["--insecure"], ["--node-config", "x=1"], ["--superlink=h:1"]):
        with pytest.raises(ValueError):
            supernode_command(agent.root, "h:1", ca, extra_args=forbidden)
    with_port = supernode_command(agent.root, "h:1", ca, extra_args=["--port", "9300"])
    assert with_port.count("--port") == 1
    # The node config travels as a TOML file that Flower's own parser reads back.
    from flwr.common.config import parse_config_args

    path = write_node_config(agent)
    assert command[command.index("--node-config") + 1] == str(path.resolve())
    assert path.name == NODE_CONFIG_FILE
    parsed = parse_config_args([str(path)])
    assert parsed == node_config(agent)
    assert parsed[STORE_PATH] == str(agent.store_path.resolve())
    assert parsed[AGENT_DIR] == str(agent.root.resolve())
    assert supernode_env(agent.root, {})["FLWR_HOME"] == str(agent.root.resolve() / "flwr")


def test_join_refuses_insecure_and_a_bad_ca(tmp_path: Path, city: dict) -> None:
    agent = make_agent(tmp_path / "agent", city["places"], city["users"][0])
    bad_ca = tmp_path / "ca.crt"
    bad_ca.write_text("not a certificate\n")
    status, _ = _cli(
        "agent", "join", "--dir", str(agent.root), "--superlink", "127.0.0.1:9",
        "--root-certificates", str(bad_ca),
    )  # fmt: skip
    assert status == 2
    good_ca = make_certificates(tmp_path / "certs", ["127.0.0.1"]).ca_cert
    status, _ = _cli(
        "agent", "join", "--dir", str(agent.root), "--superlink", "127.0.0.1:9",
        "--root-certificates", str(good_ca), "--", "--insecure",
    )  # fmt: skip
    assert status == 2


def test_registration_replies_are_parsed() -> None:
    from server.deployment import _registration

    reply = '{"success": true, "node-id": 18446744073709551615}'
    ok = subprocess.CompletedProcess([], 0, reply, "")
    assert _registration(ok) == (2**64 - 1, None)
    box = "\x1b[91mERROR \x1b[0m: ╭─ Error ─╮\n│ Public key file 'k.pub' does not exist. │\n╰─╯"
    node_id, error = _registration(subprocess.CompletedProcess([], 1, "", box))
    assert node_id is None and error == "ERROR : Error Public key file 'k.pub' does not exist."
    refused = '{"success": false, "error-message": "Public key already in use"}'
    assert _registration(subprocess.CompletedProcess([], 1, refused, "")) == (
        None,
        "Public key already in use",
    )


def test_fetch_model_needs_a_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "global.npz"
    status, _ = _cli("deploy", "fetch-model", "--out-dir", str(tmp_path), "--to", str(target))
    assert status == 2
    assert not target.exists()


def test_connection_is_read_by_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_certificates(tmp_path / "certs", ["127.0.0.1"]).ca_cert
    home = tmp_path / "flwr-home"
    write_connection("first", "10.0.0.1:9093", ca, home=home)
    write_connection("prod", "link.example.org:9093", ca, home=home, default=True)
    values = tomllib.loads((home / "config.toml").read_text())
    assert values["superlink"]["default"] == "prod"
    assert values["superlink"]["first"]["address"] == "10.0.0.1:9093"
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(home))
    connection = read_superlink_connection("prod")
    assert connection.address == "link.example.org:9093"
    assert connection.root_certificates == str(ca.resolve())
    assert not connection.insecure


def test_store_and_file_sources_give_the_same_user(tmp_path: Path, city: dict) -> None:
    agent = make_agent(tmp_path / "agent", city["places"], city["users"][1])
    places = str(agent.places_path)
    from_store = client_source({STORE_PATH: str(agent.store_path), PLACES_PATH: places}, {}, 7)
    from_file = client_source({DATA_PATH: str(city["users"][1]), PLACES_PATH: places}, {}, 7)
    assert not from_store.simulated and from_store.key == 7
    a, b = from_store.data.user, from_file.data.user
    np.testing.assert_array_equal(a.places, b.places)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    # New check-ins in the store are seen at the next instruction (no stale cache).
    extra = pd.read_csv(city["users"][1]).tail(1).copy()
    extra["timestamp"] = extra["timestamp"] + 3600
    extra_path = tmp_path / "more.csv"
    extra.to_csv(extra_path, index=False)
    assert _cli("agent", "ingest", "--dir", str(agent.root), str(extra_path))[0] == 0
    again = client_source({STORE_PATH: str(agent.store_path), PLACES_PATH: places}, {}, 7)
    assert len(again.data.user.places) == len(a.places) + 1
    empty = AgentFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="store"):
        client_source({STORE_PATH: str(empty.store_path), PLACES_PATH: places}, {}, 7)


def test_device_keeps_the_latest_global_model(tmp_path: Path, city: dict) -> None:
    agent = make_agent(tmp_path / "agent", city["places"], city["users"][0])
    node = {STORE_PATH: str(agent.store_path), PLACES_PATH: str(agent.places_path)}
    source = client_source(node, {}, 2**63 + 5)  # Flower node ids are unsigned 64-bit
    config = {
        "model-config": json.dumps({"embedding_dim": 8, "hidden_dim": 16}),
        "prior-config": json.dumps({"k": 5}),
        "prior-checksum": "abc",
        "run-key": "run-1",
    }
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert not record_global_model(node, config, source, arrays, 1, 0)  # no agent-dir
    node[AGENT_DIR] = str(agent.root)
    assert record_global_model(node, config, source, arrays, 1, 0)
    newer = {"w": arrays["w"] + 1}
    assert record_global_model(node, config, source, newer, 1, 1)
    assert not record_global_model(node, config, source, arrays, 2, 1)  # same model
    loaded, meta = load_global_model(agent.model_path)
    np.testing.assert_array_equal(loaded["w"], newer["w"])
    assert (meta["round"], meta["run_key"], meta["prior_checksum"]) == (1, "run-1", "abc")
    assert meta["num_places"] == len(read_places_csv(agent.places_path))
    status = agent.read_status()
    assert status["last_round"] == 2 and status["model_round"] == 1
    assert status["node_id"] == 2**63 + 5
    simulated = client_source({"partition-id": 0}, _simulation_config(), 1)
    assert not record_global_model(node, config, simulated, arrays, 3, 3)


def _simulation_config() -> dict:
    from server.run_config import RunConfig

    return {"data-spec": RunConfig.from_mapping({"synthetic-num-users": 2}).data_spec().to_json()}


# ----------------------------------------------------------------------------------
# real processes
# ----------------------------------------------------------------------------------


@dataclass
class Processes:
    """Processes a test starts, each in its own session; :meth:`stop_all` ends them
    and every descendant (Flower's SuperExec detaches into its own session)."""

    root: Path
    env: dict[str, str]
    started: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None):
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or self.env,
                start_new_session=True,
            )
        self.started.append((process, log))
        return process, log

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM) -> list[int]:
        """Stop ``process``, its process group and its descendants; return the pids
        still alive after SIGKILL (none expected)."""
        pids = [process.pid, *procfs.started_by(process.pid)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(procfs.alive(p) for p in pids):
            process.poll()
            time.sleep(0.1)
        for pid in [p for p in pids if procfs.alive(p)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        time.sleep(0.1)
        return [p for p in pids if procfs.alive(p)]

    def stop_all(self) -> None:
        survivors = []
        for process, _ in reversed(self.started):
            survivors += self.stop(process)
        self.started.clear()
        assert not survivors, f"processes still running after SIGKILL: {survivors}"


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return f"({path.name}: no log)"
    text = path.read_text(errors="replace").splitlines()
    return f"--- {path.name} ---\n" + "\n".join(text[-lines:])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, logs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:g} s waiting for {what}\n"
                + "\n".join(_tail(p) for p in logs)
            )
        time.sleep(0.25)


def _free_port() -> int:
    from client.agent.supernode import free_port

    return free_port()


@dataclass
class Link:
    """The module's SuperLink and the operator's environment."""

    address: str
    ca: Path
    env: dict[str, str]
    procs: Processes
    log: Path
    root: Path
    restart: Callable[[], None]

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [executable("flwr"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("deployment")
    env = {
        **os.environ,
        "FLWR_HOME": str(root / "flwr-home"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
    }
    env.pop("FEDGEO_AGENT_DIR", None)
    certs = make_certificates(root / "certs", ["127.0.0.1"])
    port = _free_port()
    address = f"127.0.0.1:{port}"
    command = superlink_command(
        root / "certs", root / "state", host="127.0.0.1", port=port, executable="flower-superlink"
    )
    (root / "state").mkdir()
    procs = Processes(root, env)
    write_connection(CONNECTION, address, certs.ca_cert, home=root / "flwr-home", default=True)
    holder: dict = {}

    def start() -> None:
        log = root / "superlink.log"
        offset = log.stat().st_size if log.exists() else 0  # a restart appends to the log
        process, log = procs.start("superlink", command)
        holder["process"], holder["log"] = process, log
        wait_for(
            lambda: (
                "Uvicorn running on" in log.read_text(errors="replace")[offset:]
                or process.poll() is not None
            ),
            30,
            "the SuperLink to start",
            [log],
        )
        assert process.poll() is None, _tail(log)

    def restart() -> None:
        assert not procs.stop(holder["process"], signal.SIGINT)
        start()

    try:
        start()
        yield Link(address, certs.ca_cert, env, procs, holder["log"], root, restart)
    finally:
        procs.stop_all()


def _join(procs: Processes, name: str, agent: AgentFolder, link: Link, *extra: str):
    command = [
        sys.executable, "-m", "fedgeo", "agent", "join", "--dir", str(agent.root),
        "--superlink", link.address, "--root-certificates", str(link.ca),
    ]  # fmt: skip
    if extra:
        command += ["--", *extra]
    return procs.start(name, command)


def _run_config(city: dict, out_dir: Path, rounds: int = 2) -> str:
    return " ".join(
        [
            f"num-rounds={rounds}",
            "eval-every=2",
            f'places-path="{city["places"]}"',
            f'out-dir="{out_dir}"',
            "resume=true",
            f"min-available-nodes={AGENTS}",
            f"min-train-nodes={AGENTS}",
            f"min-evaluate-nodes={AGENTS}",
            "node-wait=90.0",
            "round-timeout=90.0",
            "model-embedding-dim=8",
            "model-hidden-dim=16",
            "protocol-gap-hours=8.0",
        ]
    )


def _start_run(link: Link, run_config: str) -> str:
    """``flwr run`` the project on the deployment; return the run id."""
    started = link.flwr(
        "run", str(REPO_ROOT), CONNECTION, "--run-config", run_config, "--format", "json"
    )
    assert started.returncode == 0, started.stdout + started.stderr
    return json.loads(started.stdout[started.stdout.index("{") :])["run-id"]


@dataclass
class Federation:
    """Everything the module's deployment started (see :func:`federation`)."""

    link: Link
    folders: list[AgentFolder]
    registered: list[int]
    joined: list[tuple[subprocess.Popen, Path]]
    refused: dict[str, tuple[subprocess.Popen, Path]]
    run_config: str
    out_dir: Path
    run_id: str = ""
    """The latest ``flwr run`` of the module's run (the resumed one, once resumed)."""

    @property
    def logs(self) -> list[Path]:
        return [log for _, log in self.joined] + [self.link.log]


ROUNDS = 2
"""Rounds of the module's FedGeo run: the SuperLink stops after round 1 and the run
resumes for round 2."""


@pytest.fixture(scope="module")
def federation(link: Link, city: dict, tmp_path_factory: pytest.TempPathFactory):
    """The registered agents join and a two-round FedGeo run starts; at the same time
    three connections that must fail: an agent whose key was never registered, a
    SuperNode without TLS and one that does not trust the deployment's CA. The tests
    then check the outcomes while the run goes on, interrupt it and resume it."""
    root = tmp_path_factory.mktemp("agents")
    folders = [
        make_agent(root / f"agent{i}", city["places"], city["users"][i]) for i in range(AGENTS)
    ]
    stranger = make_agent(root / "stranger", city["places"], city["users"][3])
    registrations = register_keys([f.public_key_path for f in folders], CONNECTION, env=link.env)
    assert all(r.node_id is not None for r in registrations), registrations
    procs = Processes(root, link.env)
    try:
        joined = [_join(procs, f"agent{i}", f, link) for i, f in enumerate(folders)]
        supernode = executable("flower-supernode")
        env = supernode_env(stranger.root, link.env)
        retry = ["--max-retries", "1", "--max-wait-time", "5"]
        base = [supernode, "--superlink", link.address, *retry]
        key = ["--auth-supernode-private-key", str(stranger.private_key_path)]
        refused = {
            "unregistered": _join(procs, "unregistered", stranger, link, *retry),
            # Plain HTTP (hence no node authentication either): the SuperLink only
            # speaks HTTPS.
            "no-tls": procs.start(
                "no-tls", [*base, "--insecure", "--port", str(_free_port())], env
            ),
            # TLS checked against the system's CAs instead of the deployment's.
            "untrusted-ca": procs.start(
                "untrusted-ca", [*base, *key, "--port", str(_free_port())], env
            ),
        }
        out_dir = root / "run-out"
        run_config = _run_config(city, out_dir, ROUNDS)
        federation = Federation(
            link, folders, [r.node_id for r in registrations], joined, refused, run_config,
            out_dir,
        )  # fmt: skip
        federation.run_id = _start_run(link, run_config)
        yield federation
    finally:
        procs.stop_all()


def _exited(process: subprocess.Popen, log: Path) -> int:
    wait_for(lambda: process.poll() is not None, 60, f"{log.stem} to exit", [log])
    return process.returncode


@pytest.mark.slow
def test_unregistered_agent_is_refused(federation: Federation) -> None:
    process, log = federation.refused["unregistered"]
    assert _exited(process, log) != 0
    assert "Failed to activate SuperNode" in log.read_text(errors="replace"), _tail(log)
    assert "No SuperNode found with the given public key" in federation.link.log.read_text()


@pytest.mark.slow
def test_agent_without_tls_cannot_connect(federation: Federation) -> None:
    for name, reason in (
        ("no-tls", "Server disconnected without sending a response"),
        ("untrusted-ca", "CERTIFICATE_VERIFY_FAILED"),
    ):
        process, log = federation.refused[name]
        assert _exited(process, log) != 0, _tail(log)
        text = log.read_text(errors="replace")
        assert "could not establish a connection to the SuperLink" in text, _tail(log)
        assert reason in text, _tail(log)


def _wait_reconnected(federation: Federation) -> None:
    """Wait until every registered agent is online again under its node id."""
    link, registered = federation.link, set(federation.registered)

    def reconnected() -> bool:
        reply = link.flwr("supernode", "ls", CONNECTION, "--format", "json").stdout
        nodes = json.loads(reply[reply.index("{") :]).get("nodes", []) if "{" in reply else []
        online = {int(n["node-id"]) for n in nodes if n["status"] == "online"}
        return registered <= online

    wait_for(reconnected, 60, "the agents to reconnect", [link.log])


def _results(out_dir: Path) -> dict:
    path = out_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {"rounds": []}


def _check_agents_alive(federation: Federation) -> None:
    for process, log in federation.joined:
        assert process.poll() is None, f"an agent stopped\n{_tail(log)}"


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_checkpoint(federation: Federation) -> None:
    """docs/deployment.md, *Restarts and resuming*: the SuperLink stops during a run;
    its state database keeps the registrations, so the agents reconnect under the same
    node ids (which name their personal state), and the same ``flwr run`` (same
    ``out-dir``, ``resume=true``) goes on after the last checkpointed round, with the
    same devices and their personal state."""
    link, out_dir = federation.link, federation.out_dir

    def round_one() -> bool:
        _check_agents_alive(federation)
        return bool(_results(out_dir)["rounds"])

    wait_for(round_one, RUN_TIMEOUT_S, "round 1", federation.logs)
    link.restart()  # stops the SuperLink and the run's ServerApp with it
    done = [r["round"] for r in _results(out_dir)["rounds"]]
    assert done == list(range(1, len(done) + 1)) and len(done) < ROUNDS, done
    _wait_reconnected(federation)

    federation.run_id = _start_run(link, federation.run_config)

    def finished() -> bool:
        _check_agents_alive(federation)
        return "test" in _results(out_dir)

    wait_for(finished, RUN_TIMEOUT_S, "the resumed run", federation.logs)
    results = _results(out_dir)
    assert results["resumed_at"] == [len(done) + 1]
    assert [r["round"] for r in results["rounds"]] == list(range(1, ROUNDS + 1))
    assert results["nodes"]["federated"] == AGENTS
    assert results["test"]["samples"] > 0 and results["test_failures"] == 0
    devices = {node_id & (2**63 - 1) for node_id in federation.registered}  # server names
    for record in results["rounds"]:  # the same devices before and after
        assert set(record["participation"]["nodes"]) == devices, record["participation"]
    listing = ("list", "--run-id", str(federation.run_id), CONNECTION, "--format", "json")
    wait_for(
        lambda: "finished:completed" in link.flwr(*listing).stdout,
        30,
        "Flower to mark the run completed",
        [link.log],
    )


@pytest.mark.slow
def test_every_device_keeps_the_final_model_and_predicts(
    federation: Federation, city: dict, tmp_path: Path
) -> None:
    out_dir, folders = federation.out_dir, federation.folders
    assert "test" in _results(out_dir), "the run did not finish (see the test above)"
    # Every device kept the final global model: the server's last checkpoint.
    fetched = tmp_path / "global.npz"
    assert _cli("deploy", "fetch-model", "--out-dir", str(out_dir), "--to", str(fetched))[0] == 0
    server_arrays, server_meta = load_global_model(fetched)
    assert server_meta["round"] == ROUNDS
    for folder in folders:
        arrays, meta = load_global_model(folder.model_path)
        assert (meta["round"], meta["run_key"]) == (ROUNDS, server_meta["run_key"])
        assert meta["places_checksum"] == server_meta["places_checksum"]
        assert meta["prior_checksum"] == server_meta["prior_checksum"]
        assert arrays.keys() == server_arrays.keys()
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, server_arrays[key])
        status = folder.read_status()
        assert status["last_round"] == ROUNDS and status["node_id"] in federation.registered
        # Its personal state went on through the restart: one folder, every round's file
        # (the store keeps the latest KEEP_FILES).
        state = folder.state_dir / server_meta["run_key"] / f"client-{status['node_id']}"
        names = sorted(p.name for p in state.glob("round-*.npz"))
        kept = range(max(1, ROUNDS - KEEP_FILES + 1), ROUNDS + 1)
        assert names == [f"round-{r:05d}.npz" for r in kept]

    # predict on one device, from its own latest model and from the fetched file.
    place_ids = {str(pid) for pid in read_places_csv(city["places"]).ids}
    for extra in ([], ["--model", str(fetched)]):
        status, out = _cli(
            "agent", "predict", "--dir", str(folders[0].root), "--top", "5", "--json", *extra
        )
        assert status == 0
        reply = json.loads(out)
        top = [str(entry["place_id"]) for entry in reply["top"]]
        assert len(top) == 5 and len(set(top)) == 5 and set(top) <= place_ids
        assert reply["model_round"] == ROUNDS and reply["personal_state"]


@pytest.mark.slow
def test_join_forwards_sigterm_to_its_supernode(federation: Federation) -> None:
    process, log = federation.joined[0]
    supernodes = procfs.descendants(process.pid)
    assert supernodes and process.poll() is None
    os.kill(process.pid, signal.SIGTERM)  # the join process only, not its group
    assert _exited(process, log) == 0, _tail(log)
    assert "SuperNode terminated gracefully" in log.read_text(errors="replace")
    try:

        def stopped() -> bool:
            return not any(procfs.alive(p) for p in supernodes)

        wait_for(stopped, 15, "the SuperNode to stop", [log])
    except pytest.fail.Exception:
        alive = [procfs.cmdline(p) for p in supernodes if procfs.alive(p)]
        pytest.fail(f"still running after the agent stopped: {alive}")
