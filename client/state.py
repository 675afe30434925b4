"""A client's persistent state: what it keeps between rounds and never sends.

The state is a flat dict ``name -> ndarray`` whose names carry a prefix per kind:
``personal.`` (the personal model parameters, e.g. the user embedding), ``scaffold.``
(SCAFFOLD's client control variate ``c_i``), ``feddyn.`` (FedDyn's ``g_i``) and
``local.`` (the local-only baseline's whole model).

Two stores, chosen per instruction:

* **files** when the node config has ``state-dir`` (a device) or, for simulated nodes,
  the instruction's config has a non-empty ``client-state-dir``: one ``.npz`` per round
  the client trained in, under ``<dir>/<run-key>/client-<key>/``. A round's train
  reads the newest file of an *earlier* round and evaluation the newest of a round
  up to its own, so a run resumed from a round-``R`` checkpoint sees exactly the state
  the clients had after round ``R`` (a file left by an interrupted later round is
  ignored, then overwritten). The two newest files are kept.
* **memory** otherwise: an ArrayRecord per client key in ``context.state`` (Flower keeps
  the context of a simulated node for the whole run; it does not survive a restart).

``<run-key>`` (instruction config ``run-key``) names the federation, so several
federations in one simulation never see each other's state.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from fedgeo.message_keys import CLIENT_STATE_DIR, RUN_KEY

STATE_DIR = "state-dir"
"""Node-config key of a device's state folder."""
KEEP_FILES = 2
_FILE = re.compile(r"round-(\d+)\.npz$")


class ClientStateStore:
    """Load and save one client's state for one federation (see the module docstring)."""

    def __init__(
        self,
        context: Context,
        config: Mapping[str, Any],
        client_key: int,
        simulated: bool,
    ) -> None:
        self.context = context
        run_key = str(config.get(RUN_KEY, "default"))
        # One record per client key: a simulated node may serve several users.
        self.record_name = f"fedgeo-state:{run_key}:{client_key}"
        root = context.node_config.get(STATE_DIR) or (
            config.get(CLIENT_STATE_DIR) if simulated else None
        )
        self.folder = Path(str(root)) / run_key / f"client-{client_key}" if root else None

    @property
    def persistent(self) -> bool:
        """Whether the state is kept in files (survives a restart)."""
        return self.folder is not None

    def load(self, server_round: int, *, inclusive: bool) -> dict[str, np.ndarray]:
        """The newest state saved in a round before ``server_round`` (or up to it when
        ``inclusive``); empty when there is none."""
        if self.folder is None:
            record = self.context.state.get(self.record_name)
            if not isinstance(record, ArrayRecord):
                return {}
            return {key: array.numpy() for key, array in record.items()}
        limit = server_round if inclusive else server_round - 1
        rounds = [r for r in self._rounds() if r <= limit]
        if not rounds:
            return {}
        with np.load(self._path(max(rounds)), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def save(self, server_round: int, state: Mapping[str, np.ndarray]) -> None:
        """Keep ``state`` as the state after ``server_round``."""
        if self.folder is None:
            self.context.state[self.record_name] = ArrayRecord(
                {key: Array(np.asarray(value, order="C")) for key, value in state.items()}
            )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as fh:
                np.savez(fh, **{key: np.asarray(value) for key, value in state.items()})
            os.replace(tmp, self._path(server_round))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for old in sorted(self._rounds())[:-KEEP_FILES]:
            self._path(old).unlink(missing_ok=True)

    def _path(self, server_round: int) -> Path:
        assert self.folder is not None
        return self.folder / f"round-{server_round:05d}.npz"

    def _rounds(self) -> list[int]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return [int(m.group(1)) for p in self.folder.iterdir() if (m := _FILE.match(p.name))]


def select(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of ``state`` under ``prefix`` (``"personal"``, ...), prefix removed."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}


def with_prefix(prefix: str, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``values`` (tensors or arrays) as state entries under ``prefix``."""
    out = {}
    for key, value in values.items():
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        out[f"{prefix}.{key}"] = np.array(array, copy=True)
    return out
