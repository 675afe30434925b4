"""The canonical check-in table every reader produces.

A check-in table is a :class:`pandas.DataFrame` with these columns:

=================  =========  ==================================================
column             dtype      meaning
=================  =========  ==================================================
``user_id``        object     user id as in the input (int or str)
``location_id``    object     place id as in the input (int or str)
``latitude``       float64    WGS84 degrees, in [-90, 90]
``longitude``      float64    WGS84 degrees, in [-180, 180]
``timestamp``      int64      seconds since 1970-01-01 UTC (or since the input's
                              own origin when it only gives relative times)
``tz_offset_min``  int32      optional: local time = UTC + offset minutes
``category``       object     optional: place category name
=================  =========  ==================================================

Rows are in input order; readers never sort (preprocessing does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedgeo.data.errors import DataError

SECONDS_PER_DAY = 86_400
"""A day of ``timestamp`` seconds."""

REQUIRED_COLUMNS = ("user_id", "location_id", "latitude", "longitude", "timestamp")
OPTIONAL_COLUMNS = ("tz_offset_min", "category")


def validate_table(table: pd.DataFrame, source: str = "<table>") -> pd.DataFrame:
    """Check a check-in table's columns and value ranges; return it unchanged.

    Raises :class:`DataError` naming the first offending field (and row, 1-based
    among data rows) when a column is missing or a coordinate is out of range.
    """
    for col in REQUIRED_COLUMNS:
        if col not in table.columns:
            raise DataError(f"missing column (have {list(table.columns)})", path=source, field=col)
    if len(table) == 0:
        raise DataError("no check-ins", path=source)
    for col, lo, hi in (("latitude", -90.0, 90.0), ("longitude", -180.0, 180.0)):
        values = table[col].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"value {values[row]!r} outside [{lo:g}, {hi:g}] (data row {row + 1})",
                path=source,
                field=col,
            )
    return table


def empty_table() -> pd.DataFrame:
    """A check-in table with no rows and the canonical dtypes."""
    return pd.DataFrame(
        {
            "user_id": pd.Series([], dtype=object),
            "location_id": pd.Series([], dtype=object),
            "latitude": pd.Series([], dtype=np.float64),
            "longitude": pd.Series([], dtype=np.float64),
            "timestamp": pd.Series([], dtype=np.int64),
        }
    )


def write_checkins_csv(table: pd.DataFrame, path: str | Path, relative_time: bool) -> None:
    """Write a canonical check-in table as a headed CSV that ``--format csv`` reads back
    to the same table: times as ``seconds`` (since the file's own origin) when they are
    relative, else as ``timestamp`` (UTC epoch seconds)."""
    time_name = "seconds" if relative_time else "timestamp"
    columns = [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in table.columns)]
    table[columns].rename(columns={"timestamp": time_name}).to_csv(path, index=False)
