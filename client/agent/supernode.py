"""``fedgeo agent join``: run a Flower SuperNode for the agent (Flower 1.42).

The command :func:`supernode_command` builds is::

    flower-supernode --superlink HOST:PORT --root-certificates CA.crt \\
        --auth-supernode-private-key AGENT_DIR/keys/supernode_key \\
        --node-config AGENT_DIR/node-config.toml --port RUNTIME_PORT

* **TLS**: always. The SuperNode talks HTTPS to the SuperLink's Fleet API and checks
  the SuperLink's certificate against ``CA.crt``; ``--insecure`` is refused.
* **Authentication**: every request is signed with the agent's ECDSA key; a SuperLink
  started with ``--enable-supernode-auth`` only accepts keys its operator registered
  (``flwr supernode register``), and gives a registered key the same node id every time.
* **Node config** (``node-config.toml`` in the agent folder, rewritten at every join):
  ``store-path``, ``places-path``, ``state-dir`` and ``agent-dir``. The ClientApp reads
  the user's check-ins from the store (:mod:`client.data_source`), keeps personal state
  in ``state-dir`` (:mod:`client.state`) and the latest global model and status in the
  agent folder (:mod:`client.agent.device_state`).
* **The app**: the SuperNode runs no code of its own. For each run, the SuperLink ships
  the run's FAB (Flower App Bundle, built by ``flwr run`` from the FedGeo project), which
  the SuperNode unpacks under ``AGENT_DIR/flwr/apps`` (``FLWR_HOME``) and executes in a
  subprocess (``--isolation subprocess``, Flower's default): that is the FedGeo ClientApp
  (``client.app:app``). Dependencies are never installed at run time (Flower's default
  on a SuperNode), so the device needs FedGeo's dependencies installed.
* **Runtime API**: the SuperNode serves its local Runtime API to that subprocess on
  127.0.0.1; the port is picked free at start unless ``--port`` is given.

:func:`run_supernode` runs it in the foreground: SIGINT, SIGTERM, SIGHUP and SIGQUIT
are forwarded to the SuperNode, and its exit status is returned (128 + N when a
signal N ended it). When the SuperNode has exited, whatever it left in its process group
is stopped too: a ClientApp subprocess whose message was in flight when the SuperLink went
away can outlive its SuperNode, retrying a Runtime API that is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import tomli_w

from client.agent.device_state import AGENT_DIR
from client.agent.folder import AgentFolder
from client.data_source import PLACES_PATH, STORE_PATH
from client.state import STATE_DIR
from fedgeo.cli.errors import UsageError
from fedgeo.data.errors import DataError

SUPERNODE = "flower-supernode"
NODE_CONFIG_FILE = "node-config.toml"
"""The node config file :func:`run_supernode` writes into the agent folder."""
FLWR_HOME_DIR = "flwr"
"""``FLWR_HOME`` of the agent's SuperNode (installed app bundles), in the agent folder."""
FORWARDED_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    if hasattr(signal, name)
)
LEFTOVER_GRACE_S = 3.0
"""Seconds the processes a SuperNode left behind get between SIGTERM and SIGKILL."""
FORBIDDEN_ARGS = (
    "--insecure",
    "--root-certificates",
    "--node-config",
    "--auth-supernode-private-key",
    "--superlink",
)
"""Extra arguments an agent never passes on: no plain-text connection, and the CA,
node config, key and SuperLink are the agent's own."""


def node_config(folder: AgentFolder) -> dict[str, str]:
    """The SuperNode's node config for ``folder`` (absolute paths)."""
    root = folder.root.resolve()
    resolved = AgentFolder(root)
    return {
        STORE_PATH: str(resolved.store_path),
        PLACES_PATH: str(resolved.places_path),
        STATE_DIR: str(resolved.state_dir),
        AGENT_DIR: str(root),
    }


def write_node_config(folder: AgentFolder, values: Mapping[str, str] | None = None) -> Path:
    """Write the node config as TOML into the agent folder (Flower's ``--node-config``
    reads a ``.toml`` path, which keeps any character a path may hold); return its path."""
    path = folder.root / NODE_CONFIG_FILE
    text = tomli_w.dumps(dict(values if values is not None else node_config(folder)))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def supernode_executable() -> str:
    """``flower-supernode`` on PATH, else next to this Python interpreter."""
    found = shutil.which(SUPERNODE)
    if found:
        return found
    candidate = Path(sys.executable).with_name(SUPERNODE)
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(2, "Flower's SuperNode command is not installed", SUPERNODE)


def _has_option(args: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def supernode_command(
    agent_dir: Path | str,
    superlink: str,
    root_certificates: Path | str,
    *,
    extra_args: Sequence[str] | None = None,
    port: int | None = None,
    executable: str = SUPERNODE,
) -> list[str]:
    """The ``flower-supernode`` command line of an agent (see the module docstring).

    ``port`` is the local Runtime API port (ignored when ``extra_args`` has ``--port``;
    None picks a free one). Raises ``ValueError`` for an extra argument in
    :data:`FORBIDDEN_ARGS`.
    """
    agent = AgentFolder(AgentFolder(Path(agent_dir)).root.resolve())
    extra = list(extra_args or [])
    for option in FORBIDDEN_ARGS:
        if _has_option(extra, option):
            raise ValueError(f"{option} cannot be passed to an agent's SuperNode")
    command = [
        executable,
        "--superlink",
        superlink,
        "--root-certificates",
        str(Path(root_certificates).expanduser().resolve()),
        "--auth-supernode-private-key",
        str(agent.private_key_path),
        "--node-config",
        str(agent.root / NODE_CONFIG_FILE),
    ]
    if not _has_option(extra, "--port"):
        command += ["--port", str(port if port is not None else free_port())]
    return command + extra


def supernode_env(agent_dir: Path | str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The SuperNode's environment: ``base`` (default: this process's) with ``FLWR_HOME``
    in the agent folder, so app bundles land there and never in ``~/.flwr``."""
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(Path(agent_dir).expanduser().resolve() / FLWR_HOME_DIR)
    return env


def _check_certificate(path: Path) -> None:
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise DataError("no such file", path=path, field="root-certificates") from None
    except ValueError as err:
        raise DataError(
            f"not a PEM certificate ({err})", path=path, field="root-certificates"
        ) from None
    if not certificates:
        raise DataError("no certificate in the file", path=path, field="root-certificates")


def exit_status(returncode: int) -> int:
    """A shell-style exit status: ``128 + N`` for a process ended by signal ``N``."""
    return 128 - returncode if returncode < 0 else returncode


def run_supernode(
    agent_dir: Path,
    superlink: str,
    root_certificates: Path,
    *,
    extra_args: list[str] | None = None,
) -> int:
    """Run the agent's SuperNode in the foreground until it exits; return its exit status.

    Checks the agent folder, the CA certificate and the check-in store first
    (:class:`~fedgeo.data.errors.DataError` naming the file otherwise; a forbidden extra
    argument such as ``--insecure`` raises :class:`~fedgeo.cli.errors.UsageError`), writes
    ``node-config.toml``, then starts ``flower-supernode`` in its own process group and
    forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it (on Linux it also gets SIGTERM
    should this process die first).
    """
    folder = AgentFolder(Path(agent_dir))
    folder.load()
    ca = Path(root_certificates).expanduser()
    _check_certificate(ca)
    if not folder.store_path.is_file():
        raise DataError(
            "no check-in store: run 'fedgeo agent ingest FILE' first", path=folder.store_path
        )
    try:
        command = supernode_command(
            folder.root, superlink, ca, extra_args=extra_args, executable=supernode_executable()
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    write_node_config(folder)
    (folder.root / FLWR_HOME_DIR).mkdir(exist_ok=True, mode=0o700)
    process = subprocess.Popen(
        command,
        env=supernode_env(folder.root),
        process_group=0,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    previous = {}

    def forward(signum: int, _frame) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    try:
        for signum in FORWARDED_SIGNALS:
            previous[signum] = signal.signal(signum, forward)
    except ValueError:  # not the main thread: signals stay with their handlers
        pass
    try:
        while True:
            try:
                return exit_status(process.wait())
            except KeyboardInterrupt:  # a SIGINT that arrived before the handler was set
                forward(signal.SIGINT, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if process.poll() is None:
            process.kill()
            process.wait()
        stop_process_group(process.pid)


def stop_process_group(pgid: int, grace_s: float = LEFTOVER_GRACE_S) -> None:
    """SIGTERM every process left in group ``pgid``, SIGKILL those still there after
    ``grace_s`` seconds; return at once when the group is empty."""
    if not hasattr(os, "killpg"):  # not POSIX: no process groups
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child (Linux): get SIGTERM when the parent dies (``PR_SET_PDEATHSIG``)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
