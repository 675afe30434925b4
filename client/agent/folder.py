"""The agent folder: the one place that defines where a device agent keeps its files.

::

    AGENT_DIR/                    mode 0700 when the agent creates it
      agent.toml                  config: data defaults, SuperLink address once joined
      keys/supernode_key          ECDSA P-384 private key, OpenSSH format, mode 0600
      keys/supernode_key.pub      its public key (one OpenSSH line): register it
      places.csv                  the public place table (copied at init)
      store.sqlite                the user's check-ins (client.agent.store)
      state/                      personal state: node config ``state-dir`` (client.state)
      model/global.npz            latest global model (fedgeo.models.portable)
      status.json                 last round joined, run key, node id, model round
      node-config.toml            the SuperNode's node config (written by ``join``)
      flwr/                       the SuperNode's FLWR_HOME

``AGENT_DIR`` is ``--dir``, else the environment variable ``FEDGEO_AGENT_DIR``, else
``~/.fedgeo-agent``. Nothing in the folder ever leaves the device except what the
ClientApp sends (shared model arrays and metrics) and the public key, which the owner
hands to the SuperLink's operator.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

from fedgeo import __version__
from fedgeo.atomic import atomic_write
from fedgeo.data.errors import DataError

ENV_DIR = "FEDGEO_AGENT_DIR"
DEFAULT_DIR = "~/.fedgeo-agent"


class AgentFolderError(DataError):
    """The agent folder is missing, not initialized, or would be overwritten."""


def default_agent_dir() -> Path:
    """``$FEDGEO_AGENT_DIR`` or ``~/.fedgeo-agent``."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR).expanduser()


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AgentConfig:
    """The contents of ``agent.toml``."""

    created: str
    """When ``init`` made the folder (ISO 8601 UTC)."""
    places_source: str = ""
    """Where the public place table was copied from (for the record)."""
    data_format: str = "csv"
    """Default ``ingest`` format: csv, tsmc2014 or snap."""
    time_unit: str = ""
    """Default csv time unit ("" = from the column's name)."""
    superlink: str = ""
    """``HOST:PORT`` of the SuperLink, once joined."""
    root_certificates: str = ""
    """The CA certificate file used to join."""

    def to_toml(self) -> dict[str, Any]:
        return {
            "agent": {"created": self.created, "fedgeo_version": __version__},
            "data": {
                "places_source": self.places_source,
                "format": self.data_format,
                "time_unit": self.time_unit,
            },
            "superlink": {"address": self.superlink, "root_certificates": self.root_certificates},
        }

    @classmethod
    def from_toml(cls, values: Mapping[str, Any]) -> AgentConfig:
        agent, data, link = (dict(values.get(k, {})) for k in ("agent", "data", "superlink"))
        return cls(
            created=str(agent.get("created", "")),
            places_source=str(data.get("places_source", "")),
            data_format=str(data.get("format", "csv")),
            time_unit=str(data.get("time_unit", "")),
            superlink=str(link.get("address", "")),
            root_certificates=str(link.get("root_certificates", "")),
        )


@dataclass(frozen=True)
class AgentFolder:
    """Paths of an agent folder, and its config and status files."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @property
    def config_path(self) -> Path:
        return self.root / "agent.toml"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def private_key_path(self) -> Path:
        """Pass to ``flower-supernode --auth-supernode-private-key``."""
        return self.keys_dir / "supernode_key"

    @property
    def public_key_path(self) -> Path:
        """Give to the SuperLink's operator (``flwr supernode register``)."""
        return self.keys_dir / "supernode_key.pub"

    @property
    def places_path(self) -> Path:
        return self.root / "places.csv"

    @property
    def store_path(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def state_dir(self) -> Path:
        """The node config's ``state-dir`` (see :mod:`client.state`)."""
        return self.root / "state"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def model_path(self) -> Path:
        """The latest global model seen (:mod:`fedgeo.models.portable` format)."""
        return self.model_dir / "global.npz"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def initialized(self) -> bool:
        return self.config_path.is_file()

    # --- config ------------------------------------------------------------------

    def init(
        self,
        places_path: str | Path,
        *,
        data_format: str = "csv",
        time_unit: str = "",
        force: bool = False,
    ) -> AgentConfig:
        """Create the folder: config, key pair, and a copy of the public place table.

        Refuses an initialized folder unless ``force``; ``force`` replaces the config,
        the key pair (register the new public key) and the place table, and keeps the
        check-in store, personal state and model. The place table is validated first,
        so a bad one leaves nothing behind.
        """
        from client.agent.keys import generate_key_pair
        from fedgeo.data.places_io import read_places_csv

        if self.initialized and not force:
            raise AgentFolderError(
                "already an agent folder (agent.toml exists); pass --force to replace its "
                "config, key pair and place table (the check-in store is kept)",
                path=self.root,
            )
        places_path = Path(places_path).expanduser()
        read_places_csv(places_path)  # DataError naming file/line/field if bad
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if created:
            os.chmod(self.root, 0o700)
        for folder in (self.keys_dir, self.state_dir, self.model_dir):
            folder.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.keys_dir, 0o700)
        if places_path.resolve() != self.places_path.resolve():
            tmp = self.places_path.with_name(".places.csv.tmp")
            shutil.copyfile(places_path, tmp)
            os.replace(tmp, self.places_path)
        generate_key_pair(self.private_key_path, self.public_key_path)
        config = AgentConfig(
            created=now_iso(),
            places_source=str(places_path.resolve()),
            data_format=data_format,
            time_unit=time_unit or "",
        )
        self.save_config(config)
        return config

    def load(self) -> AgentConfig:
        """The config; raises :class:`AgentFolderError` when the folder is not set up."""
        if not self.initialized:
            raise AgentFolderError(
                "not an agent folder (no agent.toml): run 'fedgeo agent init --places "
                "PLACES.csv' first, or pass --dir / set FEDGEO_AGENT_DIR",
                path=self.root,
            )
        try:
            values = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise AgentFolderError(f"not valid TOML: {err}", path=self.config_path) from None
        return AgentConfig.from_toml(values)

    def save_config(self, config: AgentConfig) -> None:
        atomic_write(self.config_path, tomli_w.dumps(config.to_toml()).encode("utf-8"))

    def record_join(self, superlink: str, root_certificates: str | Path) -> AgentConfig:
        """Remember the SuperLink joined (``agent.toml``, section ``superlink``)."""
        config = replace(
            self.load(),
            superlink=superlink,
            root_certificates=str(Path(root_certificates).expanduser().resolve()),
        )
        self.save_config(config)
        return config

    # --- status ------------------------------------------------------------------

    def read_status(self) -> dict[str, Any]:
        """``status.json`` (empty when absent). Keys written by the ClientApp:
        ``last_round``, ``run_key``, ``node_id``, ``model_round``, ``updated``."""
        try:
            values = json.loads(self.status_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AgentFolderError(f"not valid JSON: {err}", path=self.status_path) from None
        if not isinstance(values, dict):
            raise AgentFolderError("not a JSON object", path=self.status_path)
        return values

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``status.json`` (written atomically, ``updated`` set)."""
        status = {**self.read_status(), **fields, "updated": now_iso()}
        atomic_write(self.status_path, (json.dumps(status, indent=2) + "\n").encode("utf-8"))
        return status

    def save_model(self, arrays: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        """Keep a global model as the latest one seen (and note its round in the status)."""
        from fedgeo.models.portable import save_global_model

        path = save_global_model(self.model_path, arrays, metadata)
        self.update_status(model_round=int(metadata["round"]), run_key=str(metadata["run_key"]))
        return path
