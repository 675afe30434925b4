"""The place table as a GeoDataFrame, and its export to GeoParquet or GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import geopandas

    from fedgeo.data.dataset import Places

CRS = "EPSG:4326"
"""WGS84 longitude/latitude, the CRS of every place GeoDataFrame."""
SUFFIXES = {".parquet": "parquet", ".geojson": "geojson", ".json": "geojson"}
"""File suffix (case-insensitive) -> export format."""


def places_to_geodataframe(places: Places) -> geopandas.GeoDataFrame:
    """One row per dense place index: ``place_index``, ``location_id``, ``geometry``.

    ``geometry`` is ``Point(longitude, latitude)`` in EPSG:4326; ``location_id`` keeps
    the original ids (and their dtype).
    """
    import geopandas

    n = len(places)
    return geopandas.GeoDataFrame(
        {
            "place_index": np.arange(n, dtype=np.int64),
            "location_id": np.asarray(places.ids),
        },
        geometry=geopandas.points_from_xy(
            np.asarray(places.longitude, dtype=np.float64),
            np.asarray(places.latitude, dtype=np.float64),
        ),
        crs=CRS,
    )


def export_places(places: Places, path: str | Path) -> Path:
    """Write the places to ``path``: GeoParquet for ``.parquet``, GeoJSON for ``.geojson``
    or ``.json``; an existing file is replaced. Returns the path.

    Raises ``ValueError`` for any other suffix.
    """
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"cannot export places to {str(path)!r}: unknown suffix {path.suffix!r} "
            f"(use one of {', '.join(SUFFIXES)})"
        )
    frame = places_to_geodataframe(places)
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        if path.exists():
            path.unlink()
        frame.to_file(path, driver="GeoJSON")
    return path
