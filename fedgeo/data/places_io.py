"""The public place table as a file: ``location_id``, ``latitude``, ``longitude``.

Deployments ship it to the server and to every device (it holds public coordinates
only); both read it with :func:`read_places_csv` so dense place indices agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedgeo.data.dataset import Places
from fedgeo.data.errors import DataError
from fedgeo.data.readers.fields import id_values

PLACE_COLUMNS = ("location_id", "latitude", "longitude")


def read_places_csv(path: str | Path) -> Places:
    """The public place table from a CSV with ``location_id``, ``latitude``, ``longitude``.

    Places are put in sorted order of their id (the order the preprocessing protocol
    gives them), so dense indices agree with a data set preprocessed on the server.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"location_id": str})
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read the place table: {err}", path=path) from None
    missing = [c for c in PLACE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", path=path, line=1)
    for column, bound in (("latitude", 90.0), ("longitude", 180.0)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~(np.abs(values) <= bound))
        if len(bad):
            raise DataError(
                f"not a coordinate in [-{bound:g}, {bound:g}]: {frame[column].iloc[bad[0]]!r}",
                path=path,
                line=int(bad[0]) + 2,
                field=column,
            )
    # The readers' rule for ids (fedgeo.data.readers.fields.id_values): int64 when every
    # id is a plain integer, else text, so "007" stays "007" on both sides.
    empty = np.flatnonzero(frame["location_id"].isna().to_numpy())
    if len(empty):
        raise DataError("empty place id", path=path, line=int(empty[0]) + 2, field="location_id")
    ids = id_values(frame["location_id"].str.strip())
    duplicated = np.flatnonzero(ids.duplicated().to_numpy())
    if len(duplicated):
        raise DataError(
            f"place id {ids.iloc[duplicated[0]]!r} appears twice",
            path=path,
            line=int(duplicated[0]) + 2,
            field="location_id",
        )
    order = _id_order(ids.to_numpy())
    return Places(
        ids=ids.to_numpy()[order],
        latitude=frame["latitude"].to_numpy(dtype=np.float64)[order],
        longitude=frame["longitude"].to_numpy(dtype=np.float64)[order],
    )


def _id_order(ids: np.ndarray) -> np.ndarray:
    """Sorted order of ids; mixed types sort by (type name, text) like the protocol."""
    try:
        return np.argsort(ids, kind="stable")
    except TypeError:
        keys = [(type(v).__name__, str(v)) for v in ids]
        return np.asarray(sorted(range(len(ids)), key=keys.__getitem__), dtype=np.int64)


def write_places_csv(places: Places, path: str | Path) -> Path:
    """Write the place table in the layout :func:`read_places_csv` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"location_id": places.ids, "latitude": places.latitude, "longitude": places.longitude}
    ).to_csv(path, index=False)
    return path
