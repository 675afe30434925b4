"""The public place table file shared by server and devices."""

from __future__ import annotations

import numpy as np
import pytest

from fedgeo.data.dataset import Places
from fedgeo.data.errors import DataError
from fedgeo.data.places_io import read_places_csv, write_places_csv


def test_round_trip_keeps_sorted_dense_order(tmp_path):
    places = Places(np.array([30, 10, 20]), np.array([40.1, 40.2, 40.3]), np.array([-74.0] * 3))
    path = write_places_csv(places, tmp_path / "places.csv")
    back = read_places_csv(path)
    assert back.ids.tolist() == [10, 20, 30]
    assert back.latitude.tolist() == [40.2, 40.3, 40.1]


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("location_id,latitude\n1,40.0\n", 1, None),
        ("location_id,latitude,longitude\n1,40.0,-74\n2,91.0,-74\n", 3, "latitude"),
        ("location_id,latitude,longitude\n1,40.0,-74\n1,40.1,-74\n", 3, "location_id"),
        ("location_id,latitude,longitude\n1,40.0,-74\n,40.1,-74\n", 3, "location_id"),
    ],
)
def test_bad_place_tables_name_line_and_field(tmp_path, text, line, field):
    path = tmp_path / "places.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_places_csv(path)
    assert err.value.path == str(path) and err.value.line == line and err.value.field == field


def test_place_ids_follow_the_readers_rule(tmp_path):
    """Ids with leading zeros stay text, as the check-in readers keep them, so a device's
    check-ins at place "007" match the public table."""
    path = tmp_path / "places.csv"
    path.write_text("location_id,latitude,longitude\n007,40.0,-74\n8,40.1,-74\n")
    assert read_places_csv(path).ids.tolist() == ["007", "8"]
    path.write_text("location_id,latitude,longitude\n10,40.0,-74\n9,40.1,-74\n")
    ids = read_places_csv(path).ids
    assert ids.dtype == np.int64 and ids.tolist() == [9, 10]
