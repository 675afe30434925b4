"""On-device prediction: the user's top-K next places from the global model and the
personal parts kept in the agent folder.

The history is every check-in in the store up to the prediction time ``at`` (default:
now), sorted by time (stable, as the preprocessing protocol sorts), with place ids
mapped to the dense indices of the public place table by their text, like
:func:`client.data_source.device_user`. Unlike training, no check-in is dropped: the
latest one is the "last place" the prediction starts from, even when it begins a new
trajectory. The model is the one in the model file's metadata, built on the public
place table (with the geographic prior rebuilt from it and checked against the
metadata's checksum); it loads the global shared arrays and then the personal state
the ClientApp saved under ``state/<run-key>/`` for the newest round up to the model's
round (a local-only run's own full model, when that is what was saved). The target is
a check-in at time ``at``: its hour of the week and the gap since the latest check-in
are the model's time inputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from client.agent.folder import AgentFolder
from client.agent.store import CheckinStore
from fedgeo.data.dataset import Places, UserData
from fedgeo.data.errors import DataError
from fedgeo.data.places_io import read_places_csv
from fedgeo.models.portable import load_global_model, places_checksum


class NoModelError(DataError):
    """The agent has no global model yet."""


@dataclass
class Prediction:
    """A top-K prediction and what it was made from."""

    top: list[tuple[Any, float]]
    """``(place id, probability)`` of the public place table, best first."""
    at: int
    """UTC seconds the prediction is for."""
    history: int
    """Check-ins used as context."""
    model_round: int
    run_key: str
    personal_state: bool
    """Whether personal parameters (or a local-only model) were found and used."""


def public_indices(location_ids: pd.Series, places: Places, source: str) -> np.ndarray:
    """Dense public-place indices of ``location_ids`` (matched by their text); raises
    :class:`DataError` naming the first id the public place table lacks."""
    index = {str(pid): i for i, pid in enumerate(places.ids)}
    text = location_ids.map(str)
    unknown = ~text.isin(index.keys()).to_numpy()
    if unknown.any():
        raise DataError(
            f"place id {text.iloc[int(np.flatnonzero(unknown)[0])]!r} is not in the public "
            "place table",
            path=source,
            field="location_id",
        )
    return text.map(index).to_numpy(dtype=np.int64)


def query_user(table: pd.DataFrame, places: Places, at: int, source: str) -> UserData:
    """The user's history up to ``at`` plus a target check-in at ``at`` (last position;
    its place is a placeholder that the model never sees)."""
    table = table[table["timestamp"].to_numpy(dtype=np.int64) <= at]
    if len(table) == 0:
        raise DataError(f"no check-in at or before time {at}: nothing to predict from", path=source)
    order = np.argsort(table["timestamp"].to_numpy(dtype=np.int64), kind="stable")
    table = table.iloc[order]
    history = public_indices(table["location_id"], places, source)
    times = table["timestamp"].to_numpy(dtype=np.int64)
    if "tz_offset_min" in table.columns:
        offsets = table["tz_offset_min"].to_numpy(dtype=np.int32)
    else:
        offsets = np.zeros(len(table), dtype=np.int32)
    n = len(history)
    empty = np.zeros(0, dtype=np.int64)
    return UserData(
        user_id=table["user_id"].iloc[0],
        places=np.r_[history, 0].astype(np.int64),
        times=np.r_[times, at].astype(np.int64),
        local_offsets=np.r_[offsets, offsets[-1]].astype(np.int32),
        traj_start=np.zeros(n + 1, dtype=np.int64),
        train=empty,
        validation=empty,
        test=np.array([n], dtype=np.int64),
    )


def personal_state(folder: AgentFolder, run_key: str, model_round: int) -> dict[str, np.ndarray]:
    """The client state saved for ``run_key`` in a round up to ``model_round`` (empty
    when none). The node id in ``status.json`` picks the client folder; without it, the
    most recently written one."""
    from flwr.app import Context, RecordDict

    from client.state import STATE_DIR, ClientStateStore
    from fedgeo.message_keys import RUN_KEY

    run_dir = folder.state_dir / run_key
    if not run_key or not run_dir.is_dir():
        return {}
    node_id = folder.read_status().get("node_id")
    candidates = [p for p in run_dir.glob("client-*") if p.is_dir()]
    if node_id is not None and (run_dir / f"client-{node_id}").is_dir():
        chosen = run_dir / f"client-{node_id}"
    elif candidates:
        chosen = max(candidates, key=lambda p: max(f.stat().st_mtime for f in [p, *p.iterdir()]))
    else:
        return {}
    try:
        key = int(chosen.name.removeprefix("client-"))
    except ValueError:
        return {}
    context = Context(
        run_id=0,
        node_id=key,
        node_config={STATE_DIR: str(folder.state_dir)},
        state=RecordDict(),
        run_config={},
    )
    store = ClientStateStore(context, {RUN_KEY: run_key}, key, simulated=False)
    return store.load(model_round, inclusive=True)


def predict_next(
    agent_dir: str | Path,
    top_k: int = 10,
    model_path: str | Path | None = None,
    *,
    at: int | None = None,
) -> Prediction:
    """The top-``top_k`` next places of the agent's user (see the module docstring).

    Raises :class:`NoModelError` when there is no model file yet and :class:`DataError`
    for an empty store, a model made for another public place table or prior, or a
    model file that does not fit its own metadata.
    """
    import torch

    from client.data_source import ClientSource
    from client.local_training import PriorMismatch, local_model, prepare
    from client.state import select
    from fedgeo.data.partition import ClientData
    from fedgeo.models import SampleIndex

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    folder = AgentFolder(Path(agent_dir))
    folder.load()
    path = Path(model_path) if model_path is not None else folder.model_path
    if not path.is_file():
        raise NoModelError(
            "no global model yet: join a federation ('fedgeo agent join') and let a round "
            "finish, or copy a model fetched on the server ('fedgeo deploy fetch-model') "
            "and pass --model",
            path=path,
        )
    arrays, meta = load_global_model(path)
    places = read_places_csv(folder.places_path)
    where = str(path)
    if meta["num_places"] != len(places):
        raise DataError(
            f"the model is for {meta['num_places']} places, the public place table "
            f"{folder.places_path} has {len(places)}",
            path=where,
            field="num_places",
        )
    if meta["places_checksum"] != places_checksum(places):
        raise DataError(
            f"the model was made for another public place table than {folder.places_path}",
            path=where,
            field="places_checksum",
        )
    table = CheckinStore(folder.store_path).to_table()
    if len(table) == 0:
        raise DataError(
            "the check-in store is empty: ingest check-ins first ('fedgeo agent ingest')",
            path=folder.store_path,
        )
    at = int(time.time()) if at is None else int(at)
    user = query_user(table, places, at, str(folder.store_path))
    source = ClientSource(
        data=ClientData(0, user, places),
        simulated=False,
        key=0,
        places_key=f"agent:{meta['places_checksum']}",
    )
    config = {
        "model-config": json.dumps(meta["model_config"], sort_keys=True),
        "prior-config": json.dumps(meta["prior_config"] or {}, sort_keys=True),
        "prior-checksum": meta["prior_checksum"],
    }
    try:
        local = local_model(source, config)
    except PriorMismatch as err:
        raise DataError(str(err), path=where, field="prior_checksum") from None
    state = personal_state(folder, meta["run_key"], meta["round"])
    local_only = bool(select(state, "local"))
    try:
        prepare(local, arrays, state, local_only)
    except (ValueError, RuntimeError) as err:
        message = str(err).splitlines()[0]
        raise DataError(f"the model does not fit its metadata: {message}", path=where) from None
    model = local.model.eval()
    index = SampleIndex([user])
    batch = local.features.build(index, np.array([0]), np.array([len(user) - 1]))
    with torch.no_grad():
        probabilities = torch.softmax(model(batch)[0].double(), dim=0).numpy()
    k = min(top_k, len(places))
    best = np.argsort(-probabilities, kind="stable")[:k]
    top = [(_scalar(places.ids[i]), float(probabilities[i])) for i in best]
    personal = bool(select(state, "personal")) or local_only
    return Prediction(top, at, len(user) - 1, meta["round"], meta["run_key"], personal)


def predict(
    agent_dir: str | Path, top_k: int = 10, model_path: str | Path | None = None
) -> list[tuple[Any, float]]:
    """``(place id, probability)`` of the user's ``top_k`` most likely next places, now."""
    return predict_next(agent_dir, top_k, model_path).top


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
