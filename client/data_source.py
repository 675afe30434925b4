"""Where a client's data comes from: its slice of a simulated data set, or its own files.

* **Simulation** (the node config has no ``data-path``): every instruction carries the
  data set's description under ``"data-spec"`` (JSON of a
  :class:`fedgeo.data.loading.DataSpec`). The worker process loads and
  preprocesses that data set once (cached by the spec) and the node keeps the user at
  index ``node_config["partition-id"]`` of ``Dataset.users``, or, when the simulation
  has fewer nodes than users and the server shares them, the user the instruction's
  ``user-partition`` names.
* **Device** (the node config has ``store-path`` or ``data-path``): the node reads its
  own check-ins from the device agent's SQLite store at ``store-path``
  (:class:`client.agent.store.CheckinStore`) or from the file ``data-path`` (format
  ``data-format``: csv, tsmc2014 or snap; optional ``time-unit``), and the public place
  table from ``places-path`` (CSV with columns ``location_id``, ``latitude``,
  ``longitude``). The check-ins are preprocessed with the protocol of the instruction's
  data spec (only its ``protocol`` is used); splits are then necessarily computed from
  this user's own trajectories.

Either way the client ends with a :class:`~fedgeo.data.partition.ClientData` whose place
indices are those of the public place table, the same on every node and on the server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fedgeo.data.dataset import Dataset, UserData
from fedgeo.data.errors import DataError
from fedgeo.data.loading import DataSpec, load_dataset, load_spec
from fedgeo.data.partition import ClientData, client_data
from fedgeo.data.places_io import read_places_csv
from fedgeo.data.protocol import ProtocolConfig, preprocess
from fedgeo.message_keys import DATA_SPEC, USER_PARTITION

PARTITION_ID = "partition-id"
DATA_PATH = "data-path"
STORE_PATH = "store-path"
"""Node-config key of the device agent's check-in store (SQLite)."""
DATA_FORMAT = "data-format"
TIME_UNIT = "time-unit"
PLACES_PATH = "places-path"
DEVICE_KEYS = (STORE_PATH, DATA_PATH)
"""Node-config keys of a device's own data (a node with either is not simulated)."""


@dataclass(frozen=True)
class ClientSource:
    """One node's data and where it came from."""

    data: ClientData
    simulated: bool
    """True when the data is a partition of a simulated data set."""
    key: int
    """Stable client key: the partition id in simulation, the node id on a device."""
    places_key: str
    """Identifies the public place table (for caches of derived objects)."""


@lru_cache(maxsize=4)
def _spec_dataset(spec: str) -> Dataset:
    """The data set of a simulation's data spec (JSON), parsed and loaded once per process."""
    return load_spec(DataSpec.from_json(spec, key=DATA_SPEC))


def _device_client(dataset: Dataset, places_path: str, source: str) -> ClientData:
    """The single user of a device's preprocessed ``dataset``, with the place indices of
    the public place table at ``places_path``; ``source`` names the data in errors."""
    places = read_places_csv(places_path)
    if len(dataset.users) != 1:
        raise DataError(
            f"a device holds one user's check-ins, found {len(dataset.users)} users",
            path=source,
            field="user_id",
        )
    index = {str(pid): i for i, pid in enumerate(places.ids)}
    local_ids = [str(pid) for pid in dataset.places.ids]
    unknown = [pid for pid in local_ids if pid not in index]
    if unknown:
        raise DataError(
            f"place id {unknown[0]!r} is not in the public place table {places_path}",
            path=source,
            field="location_id",
        )
    remap = np.asarray([index[pid] for pid in local_ids], dtype=np.int64)
    user = dataset.users[0]
    mapped = UserData(
        user_id=user.user_id,
        places=remap[user.places],
        times=user.times,
        local_offsets=user.local_offsets,
        traj_start=user.traj_start,
        train=user.train,
        validation=user.validation,
        test=user.test,
    )
    return ClientData(0, mapped, places)


@lru_cache(maxsize=4)
def device_user(
    data_path: str, data_format: str, time_unit: str, places_path: str, protocol_json: str
) -> ClientData:
    """This device's user from a check-in file (cached)."""
    protocol = ProtocolConfig(**json.loads(protocol_json))
    dataset, _ = load_dataset(
        data_path, data_format, time_unit=time_unit or None, protocol=protocol
    )
    return _device_client(dataset, places_path, data_path)


def store_version(store_path: str) -> tuple[int, ...]:
    """Size and modification time of the store's files (the database and its SQLite
    journal/WAL): a change means new check-ins, so cached users are read again."""
    out: list[int] = []
    for suffix in ("", "-wal", "-journal"):
        try:
            info = os.stat(store_path + suffix)
        except FileNotFoundError:
            out += [-1, -1]
        else:
            out += [info.st_size, info.st_mtime_ns]
    return tuple(out)


@lru_cache(maxsize=4)
def store_user(
    store_path: str, places_path: str, protocol_json: str, version: tuple[int, ...]
) -> ClientData:
    """This device's user from the agent's check-in store (cached per ``version``, see
    :func:`store_version`)."""
    from client.agent.store import CheckinStore

    if not os.path.isfile(store_path):
        raise DataError("no check-in store: run 'fedgeo agent ingest' first", path=store_path)
    table = CheckinStore(store_path).to_table()
    if table.empty:
        raise DataError("the check-in store is empty: run 'fedgeo agent ingest'", path=store_path)
    protocol = ProtocolConfig(**json.loads(protocol_json))
    dataset = preprocess(table, protocol, name=store_path)
    return _device_client(dataset, places_path, store_path)


def client_source(
    node_config: dict[str, Any], config: dict[str, Any], node_id: int
) -> ClientSource:
    """The node's data, from its node config (device) or the instruction (simulation)."""
    spec = config.get(DATA_SPEC)
    device_key = STORE_PATH if node_config.get(STORE_PATH) else DATA_PATH
    if node_config.get(device_key):
        if USER_PARTITION in config:
            raise ValueError(f"'{USER_PARTITION}' is for simulated nodes; a device holds one user")
        if not node_config.get(PLACES_PATH):
            raise ValueError(f"node config has '{device_key}' but no '{PLACES_PATH}'")
        protocol = DataSpec.from_json(str(spec), key=DATA_SPEC).protocol if spec else None
        protocol_json = json.dumps((protocol or ProtocolConfig()).to_dict(), sort_keys=True)
        places_path = str(node_config[PLACES_PATH])
        if device_key == STORE_PATH:
            store_path = str(node_config[STORE_PATH])
            data = store_user(store_path, places_path, protocol_json, store_version(store_path))
        else:
            data = device_user(
                str(node_config[DATA_PATH]),
                str(node_config.get(DATA_FORMAT, "csv")),
                str(node_config.get(TIME_UNIT, "")),
                places_path,
                protocol_json,
            )
        return ClientSource(data, False, int(node_id), f"places:{places_path}")
    if spec is None:
        raise ValueError(
            f"no data: the instruction has no '{DATA_SPEC}' and the node config no "
            f"'{STORE_PATH}' or '{DATA_PATH}'"
        )
    if PARTITION_ID not in node_config:
        raise ValueError(f"simulated node without '{PARTITION_ID}' in its node config")
    dataset = _spec_dataset(str(spec))
    partition = int(config.get(USER_PARTITION, node_config[PARTITION_ID]))
    if not 0 <= partition < len(dataset.users):
        raise ValueError(
            f"partition id {partition} outside the data set's {len(dataset.users)} users "
            f"(set num-supernodes to {len(dataset.users)})"
        )
    return ClientSource(client_data(dataset, partition), True, partition, f"spec:{spec}")
