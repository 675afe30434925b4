"""Places as a GeoDataFrame and their GeoParquet / GeoJSON export."""

from __future__ import annotations

import geopandas
import numpy as np
import pytest

from fedgeo.data.dataset import Places
from fedgeo.geo.places import export_places, places_to_geodataframe


def make_places(ids) -> Places:
    n = len(ids)
    return Places(
        np.asarray(ids),
        40.70 + 0.01 * np.arange(n, dtype=np.float64),
        -74.00 + 0.02 * np.arange(n, dtype=np.float64),
    )


def test_geodataframe_has_crs_columns_and_lon_lat_points():
    places = make_places([101, 205, 307])
    frame = places_to_geodataframe(places)
    assert isinstance(frame, geopandas.GeoDataFrame)
    assert frame.crs.to_epsg() == 4326
    assert list(frame.columns) == ["place_index", "location_id", "geometry"]
    assert frame["place_index"].tolist() == [0, 1, 2]
    assert frame["location_id"].tolist() == [101, 205, 307]
    np.testing.assert_array_equal(frame.geometry.x, places.longitude)
    np.testing.assert_array_equal(frame.geometry.y, places.latitude)
    assert places.to_geodataframe().equals(frame)


def read_back(path) -> geopandas.GeoDataFrame:
    return geopandas.read_parquet(path) if path.suffix == ".parquet" else geopandas.read_file(path)


@pytest.mark.parametrize("name", ["places.parquet", "places.geojson", "places.json", "P.GEOJSON"])
@pytest.mark.parametrize("ids", [[101, 205, 307], ["4b0a", "4c1d", "x y"]])
def test_export_round_trip(tmp_path, name, ids):
    places = make_places(ids)
    path = export_places(places, tmp_path / name)
    assert path.is_file()
    back = read_back(path)
    assert back.crs.to_epsg() == 4326
    assert back["place_index"].tolist() == [0, 1, 2]
    assert back["location_id"].tolist() == ids
    np.testing.assert_allclose(back.geometry.x, places.longitude)
    np.testing.assert_allclose(back.geometry.y, places.latitude)
    # writing again replaces the file
    export_places(make_places(ids[:2]), path)
    assert len(read_back(path)) == 2


def test_export_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"unknown suffix '\.csv'"):
        export_places(make_places([1]), tmp_path / "places.csv")
    with pytest.raises(ValueError, match="unknown suffix"):
        export_places(make_places([1]), tmp_path / "places")
