"""The portable global model file: shared arrays plus the metadata needed to use them.

One ``.npz`` file (NumPy's zip of ``.npy`` arrays): every entry is an array of the
model's shared state dict, and the entry :data:`METADATA_KEY` holds the metadata as
UTF-8 JSON bytes. It is read with ``allow_pickle=False``, so loading a file never runs
code. Metadata (:func:`model_metadata` builds it):

==================  ==================================================================
``format``          ``"fedgeo-global-model"``; ``format_version``: 1
``model_config``    :meth:`ModelConfig.to_dict` of the model
``prior_config``    :meth:`PriorConfig.to_dict` of the geographic prior (None: no prior)
``prior_checksum``  :meth:`AdjacencyPrior.checksum` ("" when the model uses no prior)
``num_places``      places in the public place table
``places_checksum`` :func:`places_checksum` of that table
``round``           the server round after which these arrays are the global model
``run_key``         the federation's run key (names the clients' personal state)
``fedgeo_version``  the version that wrote the file; ``created``: ISO 8601 UTC time
==================  ==================================================================

Extra JSON-serializable entries (e.g. ``protocol``) are kept as they are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedgeo import __version__
from fedgeo.atomic import atomic_open
from fedgeo.data.dataset import Places
from fedgeo.data.errors import DataError

FORMAT = "fedgeo-global-model"
FORMAT_VERSION = 1
METADATA_KEY = "__fedgeo_metadata__"
"""The npz entry holding the metadata JSON (never a model parameter name)."""
REQUIRED = {
    "model_config": dict,
    "prior_config": (dict, type(None)),
    "prior_checksum": str,
    "num_places": int,
    "places_checksum": str,
    "round": int,
    "run_key": str,
}
"""Metadata fields a caller must give, with their JSON types."""


def places_checksum(places: Places) -> str:
    """Hex SHA-256 of a public place table (ids as text, coordinates as float64), in
    dense-index order: equal tables, equal checksums."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(pid) for pid in places.ids]).encode("utf-8"))
    digest.update(np.ascontiguousarray(places.latitude, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(places.longitude, dtype="<f8").tobytes())
    return digest.hexdigest()


def model_metadata(
    *,
    model_config: Mapping[str, Any],
    prior_config: Mapping[str, Any] | None,
    prior_checksum: str,
    places: Places,
    server_round: int,
    run_key: str,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata of a global model file (``extra`` entries are kept as given)."""
    return {
        "model_config": dict(model_config),
        "prior_config": dict(prior_config) if prior_config is not None else None,
        "prior_checksum": str(prior_checksum),
        "num_places": len(places),
        "places_checksum": places_checksum(places),
        "round": int(server_round),
        "run_key": str(run_key),
        **extra,
    }


def _check_metadata(metadata: Mapping[str, Any], where: str) -> None:
    """Raise :class:`DataError` naming the first missing or mistyped field."""
    for key, kind in REQUIRED.items():
        if key not in metadata:
            raise DataError("missing metadata field", path=where, field=key)
        value = metadata[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise DataError(f"wrong type {type(value).__name__}", path=where, field=key)
    for key, low in (("num_places", 1), ("round", 0)):
        if metadata[key] < low:
            raise DataError(f"must be >= {low}, got {metadata[key]}", path=where, field=key)
    from fedgeo.models.config import ModelConfig

    try:
        ModelConfig.from_dict(dict(metadata["model_config"]))
    except (TypeError, ValueError) as err:
        raise DataError(str(err), path=where, field="model_config") from None
    if metadata["prior_config"] is not None:
        from fedgeo.geo.prior import PriorConfig

        try:
            PriorConfig(**metadata["prior_config"])
        except (TypeError, ValueError) as err:
            raise DataError(str(err), path=where, field="prior_config") from None


def save_global_model(
    path: str | Path, arrays: Mapping[str, Any], metadata: Mapping[str, Any]
) -> Path:
    """Write ``arrays`` (name -> array or tensor) and ``metadata`` to one file, atomically.

    ``format``, ``format_version``, ``fedgeo_version`` and ``created`` are added when
    absent. Raises :class:`DataError` for incomplete metadata and ``ValueError`` for a
    non-numeric array or a reserved name.
    """
    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fedgeo_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **dict(metadata),
    }
    _check_metadata(meta, "<metadata>")
    entries: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if name == METADATA_KEY:
            raise ValueError(f"array name {name!r} is reserved for the metadata")
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"array {name!r} has dtype {array.dtype}: not numeric")
        entries[name] = np.ascontiguousarray(array)
    entries[METADATA_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_open(path) as fh:
        np.savez(fh, **entries)
    return path


def load_global_model(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, metadata)`` of a file written by :func:`save_global_model`.

    Raises ``FileNotFoundError`` when the file is absent and :class:`DataError` naming
    the file (and the field) when it is not a valid global model file.
    """
    path = Path(path)
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if METADATA_KEY not in data.files:
                raise DataError("not a FedGeo global model file (no metadata)", path=where)
            raw = data[METADATA_KEY]
            arrays = {k: data[k] for k in data.files if k != METADATA_KEY}
    except FileNotFoundError:
        raise
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DataError(f"not a readable global model file ({err})", path=where) from None
    try:
        metadata = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"metadata is not JSON ({err})", path=where, field="metadata") from None
    if not isinstance(metadata, dict):
        raise DataError("metadata is not a JSON object", path=where, field="metadata")
    if metadata.get("format") != FORMAT:
        raise DataError(
            f"expected {FORMAT!r}, got {metadata.get('format')!r}", path=where, field="format"
        )
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"unsupported version {version!r} (this FedGeo reads {FORMAT_VERSION})",
            path=where,
            field="format_version",
        )
    _check_metadata(metadata, where)
    if not arrays:
        raise DataError("the file holds no arrays", path=where, field="arrays")
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise DataError(f"dtype {array.dtype} is not numeric", path=where, field=name)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError("holds NaN or infinite values", path=where, field=name)
    return arrays, metadata
