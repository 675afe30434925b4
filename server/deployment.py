"""The server side of a real deployment (Flower 1.42): SuperLink command, ``flwr``
connection, SuperNode registration and the portable global model. See docs/deployment.md.

One SuperLink process serves, on one HTTPS port, the Fleet API (SuperNodes), the Control
API (the operator's ``flwr`` CLI) and the Runtime API (the ServerApp process it starts
for each run). :func:`superlink_command` starts it with TLS, SuperNode authentication
(only registered public keys may connect), a persistent SQLite state database (registered
nodes keep their node ids across restarts) and no run-time dependency installation
(the FedGeo environment is installed on the host, a FAB never pip-installs anything).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedgeo.data.errors import DataError
from server.certs import CA_CERT, SERVER_CERT, SERVER_KEY

SUPERLINK = "flower-superlink"
FLWR = "flwr"
DATABASE_FILE = "superlink.db"
DEFAULT_PORT = 9093
FLOWER_CONFIG_FILE = "config.toml"
"""The ``flwr`` CLI's connection file in ``FLWR_HOME`` (default ``~/.flwr``)."""


def executable(name: str) -> str:
    """``name`` on PATH, else next to this Python interpreter, else ``name`` itself."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.is_file() else name


def superlink_command(
    certs_dir: Path | str,
    state_dir: Path | str,
    *,
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    extra_args: Sequence[str] | None = None,
    executable: str = SUPERLINK,
) -> list[str]:
    """The ``flower-superlink`` command line of a deployment.

    ``certs_dir`` holds the files of :func:`server.certs.make_certificates`; the state
    database is ``state_dir/superlink.db``. Raises :class:`DataError` naming a
    missing certificate file and ``ValueError`` for ``--insecure`` in ``extra_args``.
    """
    certs = Path(certs_dir).expanduser().resolve()
    for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
        if not (certs / name).is_file():
            raise DataError(
                "missing certificate file (run 'fedgeo deploy certs')", path=certs / name
            )
    extra = list(extra_args or [])
    if "--insecure" in extra:
        raise ValueError("a FedGeo deployment never runs its SuperLink without TLS")
    state = Path(state_dir).expanduser().resolve()
    return [
        executable,
        "--ssl-ca-certfile",
        str(certs / CA_CERT),
        "--ssl-certfile",
        str(certs / SERVER_CERT),
        "--ssl-keyfile",
        str(certs / SERVER_KEY),
        "--enable-supernode-auth",
        "--database",
        str(state / DATABASE_FILE),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        *extra,
    ]


def flwr_home() -> Path:
    """The ``flwr`` CLI's folder: ``$FLWR_HOME`` or ``~/.flwr``."""
    return Path(os.environ.get("FLWR_HOME") or "~/.flwr").expanduser()


def write_connection(
    name: str,
    address: str,
    root_certificates: Path | str,
    *,
    default: bool = False,
    home: Path | None = None,
) -> Path:
    """Add (or replace) the SuperLink connection ``name`` in the ``flwr`` CLI's
    ``config.toml``, so that ``flwr run . NAME`` and ``flwr supernode register KEY NAME``
    reach the SuperLink at ``address`` over TLS checked with ``root_certificates``;
    with ``default``, make it the default connection. Returns the file's path."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"connection name must be letters, digits, '-' or '_', got {name!r}")
    ca = Path(root_certificates).expanduser().resolve()
    if not ca.is_file():
        raise FileNotFoundError(2, "no such file", str(ca))
    path = (home if home is not None else flwr_home()) / FLOWER_CONFIG_FILE
    values: dict[str, Any] = {}
    if path.is_file():
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    superlink = values.setdefault("superlink", {})
    superlink[name] = {"address": address, "root-certificates": str(ca)}
    if default or "default" not in superlink:
        superlink["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(tomli_w.dumps(values), encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Registration:
    """The outcome of registering one public key."""

    public_key: Path
    node_id: int | None
    error: str | None = None


def register_keys(
    public_keys: Sequence[Path | str],
    connection: str | None = None,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    workers: int = 4,
) -> list[Registration]:
    """Register SuperNode public keys with the SuperLink via ``flwr supernode register``
    (one call per key, ``workers`` at a time, over the Control API of connection
    ``connection``); a key that fails (unreadable, already registered, SuperLink
    unreachable) gets ``error``. Results are in the order of ``public_keys``."""

    def one(key: Path | str) -> Registration:
        key_path = Path(key).expanduser()
        command = [executable(FLWR), "supernode", "register", str(key_path)]
        if connection:
            command.append(connection)
        command += ["--format", "json"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            return Registration(key_path, None, f"no answer within {timeout:g} s")
        node_id, error = _registration(done)
        return Registration(key_path, node_id, error)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, public_keys))


def _registration(done: subprocess.CompletedProcess) -> tuple[int | None, str | None]:
    """(node id, None) from ``flwr supernode register --format json``, or (None, reason)."""
    text = done.stdout.strip()
    start = text.find("{")
    try:
        reply = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        reply = {}
    if done.returncode == 0 and reply.get("success") and "node-id" in reply:
        return int(reply["node-id"]), None
    reason = str(reply.get("error-message") or done.stderr or text or "no reply")
    reason = re.sub(r"\x1b\[[0-9;]*m|[─│╭╮╰╯]", " ", reason)  # colours, rich's box
    return None, " ".join(reason.split())[:300]


def fetch_model(out_dir: Path | str, to: Path | str) -> Path:
    """Write the global model of the run in ``out_dir`` (its last checkpoint) as a
    portable model file ``to`` (:mod:`fedgeo.models.portable`), with the metadata an
    agent's ``predict`` checks: model and prior settings, prior and place-table
    checksums, round, run key and preprocessing protocol.

    The run's public place table (run config ``places-path``; the simulated data set's
    places when empty) must be readable here. Raises :class:`DataError` when there
    is no checkpoint.
    """
    from fedgeo.data.places_io import read_places_csv
    from fedgeo.geo.prior import AdjacencyPrior
    from fedgeo.models.portable import model_metadata, save_global_model
    from server.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from server.run_config import RunConfig

    out = Path(out_dir).expanduser()
    checkpoint = load_checkpoint(out)
    if checkpoint is None:
        raise DataError("no checkpoint: has a round finished?", path=out / CHECKPOINT_FILE)
    # The run key names the clients' state: derive it from where the run's outputs are.
    config = RunConfig.from_mapping({**checkpoint.config, "out-dir": str(out.resolve())})
    if config.places_path is not None:
        places = read_places_csv(config.places_path)
    else:
        from server.app import simulation_dataset

        places = simulation_dataset(config).places
    model_config = config.model
    prior = AdjacencyPrior.from_places(places, config.prior) if model_config.uses_prior else None
    metadata = model_metadata(
        model_config=model_config.to_dict(),
        prior_config=dataclasses.asdict(config.prior) if prior is not None else None,
        prior_checksum=prior.checksum() if prior is not None else "",
        places=places,
        server_round=checkpoint.server_round,
        run_key=config.run_key(),
        protocol=config.protocol.to_dict(),
    )
    return save_global_model(Path(to).expanduser(), checkpoint.arrays, metadata)
