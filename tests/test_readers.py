"""Check-in readers: real files, every format's layout, column detection, stdin."""

from __future__ import annotations

import bz2
import gzip
import io
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from fedgeo.data.errors import DataError
from fedgeo.data.readers import FORMATS, ReadResult, read_checkins
from fedgeo.data.table import validate_table

NYC_CSV = "foursquare-nyc/checkins.csv"
TSMC_SUBSET = "tsmc2014-nyc-subset/dataset_TSMC2014_NYC_subset.txt"


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


# Made-up rows in the documented layouts (no real data).
TSMC_TEXT = (
    "7\tvA01\tc01\tCoffee Shop\t40.7000\t-73.9000\t-240\tSat Jun 16 21:29:30 +0000 2012\n"
    "7\tvB02\tc02\tCaf\xe9\t40.7100\t-73.9100\t-240\tSun Jun 17 08:00:00 +0000 2012\n"
    "9\tvA01\tc01\tCoffee Shop\t40.7000\t-73.9000\t-300\tMon Dec 03 10:15:00 +0000 2012\n"
)
SNAP_TEXT = (
    "0\t2010-10-19T23:55:27Z\t30.2500\t-97.7500\t1001\n"
    "0\t2010-10-18T22:17:43Z\t30.2600\t-97.7400\t1002\n"
    "12\t2010-10-17T23:42:03Z\t30.2700\t-97.7300\t1003\n"
)
BRIGHTKITE_TEXT = (
    "0\t2010-10-17T01:48:53Z\t39.7500\t-104.9900\t0a1b2c3d4e5f60718293a4b5c6d7e8f9\n"
    "0\t2010-10-16T06:02:04Z\t0.0\t0.0\tffeeddccbbaa99887766554433221100\n"
    "1\t2010-10-16T03:48:54Z\t\t\t00112233445566778899aabbccddeeff\n"
    "1\t2010-10-15T03:48:54Z\t39.7000\t-105.0000\t00112233445566778899aabbccddeeff\n"
)
CSV_TEXT = (
    "user_id,location_id,latitude,longitude,time_min\n"
    "1,10,40.70,-73.90,100\n"
    "1,11,40.80,-73.80,160\n"
    "2,10,40.70,-73.90,30\n"
)


def assert_canonical(result: ReadResult) -> pd.DataFrame:
    table = result.table
    validate_table(table)
    assert list(table.columns[:5]) == [
        "user_id",
        "location_id",
        "latitude",
        "longitude",
        "timestamp",
    ]
    assert table["latitude"].dtype == np.float64 and table["longitude"].dtype == np.float64
    assert table["timestamp"].dtype == np.int64
    assert isinstance(table.index, pd.RangeIndex)
    return table


# --- real files ---------------------------------------------------------------------


def test_real_nyc_csv_loads_with_format_csv_only(shared_file):
    path = shared_file(NYC_CSV)
    start = time.perf_counter()
    result = read_checkins(path, "csv")
    elapsed = time.perf_counter() - start
    table = assert_canonical(result)
    assert len(table) == 147_938
    assert table["user_id"].nunique() == 1_083
    assert table["location_id"].nunique() == 5_135
    assert table["user_id"].dtype == np.int64 and table["location_id"].dtype == np.int64
    raw = pd.read_csv(path)
    np.testing.assert_array_equal(table["timestamp"], raw["time_min"].to_numpy() * 60)
    np.testing.assert_array_equal(table["latitude"], raw["latitude"])
    assert result.columns["timestamp"] == "time_min"
    assert result.relative_time and result.skipped == 0
    assert elapsed < 3.0, f"reading the NYC csv took {elapsed:.2f} s"


def test_real_tsmc2014_subset(shared_file):
    result = read_checkins(shared_file(TSMC_SUBSET), "tsmc2014")
    table = assert_canonical(result)
    assert (len(table), table["user_id"].nunique(), table["location_id"].nunique()) == (
        21_406,
        962,
        4_330,
    )
    assert table["user_id"].dtype == np.int64
    assert table["location_id"].dtype == object  # hex venue ids stay strings
    assert table["tz_offset_min"].dtype == np.int32
    assert set(table["tz_offset_min"].unique()) <= set(range(-720, 841))
    # latin-1 decoding: no replacement characters, accented names intact
    categories = set(table["category"])
    assert not any("\ufffd" in c for c in categories)
    assert any(not c.isascii() for c in categories)
    first = table["timestamp"].min()
    assert epoch("2012-04-01T00:00:00") <= first < epoch("2013-03-01T00:00:00")
    assert not result.relative_time


# --- the three layouts on fixtures ------------------------------------------------------


def test_tsmc2014_fixture(write_file):
    path = write_file("tsmc.txt", TSMC_TEXT, encoding="latin-1")
    table = assert_canonical(read_checkins(path, "tsmc2014"))
    assert table["user_id"].tolist() == [7, 7, 9]
    assert table["location_id"].tolist() == ["vA01", "vB02", "vA01"]
    assert table["category"].tolist() == ["Coffee Shop", "Caf\xe9", "Coffee Shop"]
    assert table["tz_offset_min"].tolist() == [-240, -240, -300]
    assert table["timestamp"].tolist() == [
        epoch("2012-06-16T21:29:30"),
        epoch("2012-06-17T08:00:00"),
        epoch("2012-12-03T10:15:00"),
    ]


def test_snap_gowalla_fixture_keeps_input_order(write_file):
    table = assert_canonical(read_checkins(write_file("gowalla.txt", SNAP_TEXT), "snap"))
    assert table["user_id"].tolist() == [0, 0, 12]
    assert table["location_id"].dtype == np.int64
    assert table["location_id"].tolist() == [1001, 1002, 1003]
    # rows stay in input order (these are newest first, as in the SNAP files)
    assert table["timestamp"].tolist() == [
        epoch("2010-10-19T23:55:27"),
        epoch("2010-10-18T22:17:43"),
        epoch("2010-10-17T23:42:03"),
    ]
    assert "category" not in table.columns and "tz_offset_min" not in table.columns


def test_snap_brightkite_hex_ids_and_missing_coordinates(write_file):
    path = write_file("brightkite.txt", BRIGHTKITE_TEXT)
    with pytest.raises(DataError) as err:
        read_checkins(path, "snap")
    assert f"{path}:2: field 'latitude'" in str(err.value) and "(0, 0)" in str(err.value)
    result = read_checkins(path, "snap", skip_bad=True)
    table = assert_canonical(result)
    assert result.skipped == 2
    assert table["location_id"].tolist() == [
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "00112233445566778899aabbccddeeff",
    ]
    assert [e.split(":")[1] for e in result.skipped_examples] == ["2", "3"]


def test_csv_fixture(write_file):
    result = read_checkins(write_file("c.csv", CSV_TEXT), "csv")
    table = assert_canonical(result)
    assert table["timestamp"].tolist() == [6000, 9600, 1800]
    assert result.relative_time
    assert result.columns == {
        "user_id": "user_id",
        "location_id": "location_id",
        "latitude": "latitude",
        "longitude": "longitude",
        "timestamp": "time_min",
    }


def test_formats_constant():
    assert FORMATS == ("tsmc2014", "snap", "csv")


# --- csv column detection and mapping ------------------------------------------------------

ISO = "2012-06-16T21:29:30Z"
T0 = epoch("2012-06-16T21:29:30")


@pytest.mark.parametrize(
    ("header", "time_value", "expected", "relative"),
    [
        ("user_id,location_id,latitude,longitude,timestamp", ISO, T0, False),
        ("UserId,VenueId,Lat,Lng,utcTimestamp", "Sat Jun 16 21:29:30 +0000 2012", T0, False),
        ("user,poi,LATITUDE,long,datetime", "2012-06-16 23:29:30+02:00", T0, False),
        ("userid,place_id,lat,lon,unix", str(T0), T0, False),
        ("User ID,Venue,lat,lon,time", str(T0), T0, False),
        ("user_id,location,latitude,longitude,time_ms", "90500", 90, True),
        ("user_id,poi_id,latitude,longitude,minutes", "3", 180, True),
        ("user_id,venue_id,latitude,longitude,time_sec", "42", 42, True),
        ("user_id,venue_id,latitude,longitude,seconds", "42.4", 42, True),
    ],
)
def test_csv_column_auto_detection(write_file, header, time_value, expected, relative):
    text = f"{header}\n5,77,40.5,-73.5,{time_value}\n"
    result = read_checkins(write_file("auto.csv", text), "csv")
    table = assert_canonical(result)
    assert table.iloc[0][["user_id", "location_id", "latitude", "longitude"]].tolist() == [
        5,
        77,
        40.5,
        -73.5,
    ]
    assert table["timestamp"].tolist() == [expected]
    assert result.relative_time is relative


def test_csv_optional_columns_and_extra_columns(write_file):
    text = (
        "venueCategory,extra,user_id,location_id,latitude,longitude,timezoneOffset,timestamp\n"
        "Bar,x,1,2,40.5,-73.5,-240,2012-06-16T21:29:30Z\n"
    )
    table = assert_canonical(read_checkins(write_file("opt.csv", text), "csv"))
    assert table["category"].tolist() == ["Bar"]
    assert table["tz_offset_min"].dtype == np.int32 and table["tz_offset_min"].tolist() == [-240]
    assert "extra" not in table.columns


def test_csv_explicit_mapping_and_time_unit(write_file):
    text = "uid,where,y,x,t\nalice,home,40.5,-73.5,1339882170000\n"
    path = write_file("mapped.csv", text)
    columns = {
        "user_id": "uid",
        "location_id": "where",
        "latitude": "y",
        "longitude": "x",
        "timestamp": "t",
    }
    result = read_checkins(path, "csv", columns=columns, time_unit="ms")
    table = assert_canonical(result)
    assert table["user_id"].tolist() == ["alice"] and table["user_id"].dtype == object
    assert table["timestamp"].tolist() == [T0]
    assert result.columns == columns and not result.relative_time


def test_csv_time_unit_overrides_the_column_name(write_file):
    path = write_file("t.csv", "user_id,location_id,lat,lon,time_min\n1,2,3,4,2012-06-16\n")
    table = read_checkins(path, "csv", time_unit="iso").table
    assert table["timestamp"].tolist() == [epoch("2012-06-16T00:00:00")]


def test_csv_mapping_to_an_absent_column_names_it(write_file):
    path = write_file("m.csv", CSV_TEXT)
    with pytest.raises(DataError) as err:
        read_checkins(path, "csv", columns={"user_id": "uid"})
    assert str(err.value).startswith(f"{path}:1: field 'uid': column 'uid' not found")


def test_bad_arguments_raise_value_error(write_file):
    path = write_file("c.csv", CSV_TEXT)
    with pytest.raises(ValueError, match="unknown format"):
        read_checkins(path, "parquet")
    with pytest.raises(ValueError, match="unknown column 'uid'"):
        read_checkins(path, "csv", columns={"uid": "user_id"})
    with pytest.raises(ValueError, match="time_unit"):
        read_checkins(path, "csv", time_unit="hours")
    with pytest.raises(ValueError, match="csv format only"):
        read_checkins(path, "snap", time_unit="s")
    with pytest.raises(ValueError, match="unknown encoding"):
        read_checkins(path, "csv", encoding="klingon")


def test_epoch_milliseconds_in_a_seconds_column_suggest_time_unit(write_file):
    path = write_file("ms.csv", "user_id,location_id,lat,lon,timestamp\n1,2,3,4,1339882170000\n")
    with pytest.raises(DataError, match="time_unit='ms'"):
        read_checkins(path, "csv")
    assert read_checkins(path, "csv", time_unit="ms").table["timestamp"].tolist() == [T0]


# --- ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "dtype", "values"),
    [
        (["1", "-2", "30"], np.int64, [1, -2, 30]),
        (["1", "a", "30"], object, ["1", "a", "30"]),
        (["007", "1", "2"], object, ["007", "1", "2"]),  # leading zeros are not integers
        (["99999999999999999999", "1", "2"], object, ["99999999999999999999", "1", "2"]),
    ],
)
def test_ids_are_int64_only_when_all_are_integers(write_file, ids, dtype, values):
    rows = "".join(f"{i},{i},1.0,2.0,{n}\n" for n, i in enumerate(ids))
    path = write_file("ids.csv", "user_id,location_id,lat,lon,time_s\n" + rows)
    table = read_checkins(path, "csv").table
    for col in ("user_id", "location_id"):
        assert table[col].dtype == dtype
        assert table[col].tolist() == values


# --- text details ---------------------------------------------------------------------------


def test_crlf_blank_lines_whitespace_and_no_final_newline(write_file):
    text = (
        "\r\n user_id , location_id,latitude,longitude,time_min\r\n"
        "\r\n"
        " 1 , 10 , 40.7 ,-73.9, 100\r\n"
        "   \r\n"
        "2,11,40.8,-73.8,200"
    )
    table = read_checkins(write_file("crlf.csv", text), "csv").table
    assert table["user_id"].tolist() == [1, 2]
    assert table["timestamp"].tolist() == [6000, 12000]


def test_blank_lines_keep_line_numbers_exact(write_file):
    text = "user_id,location_id,lat,lon,time_min\n\n1,2,3,4,5\n\n\n1,2,3,x,5\n"
    with pytest.raises(DataError) as err:
        read_checkins(write_file("b.csv", text), "csv")
    assert err.value.line == 6 and err.value.field == "lon"


def test_lone_carriage_return_stays_inside_its_field(write_file):
    text = SNAP_TEXT + "1\t2010-10-19T23:55:27Z\t30\r1\t-97.1\t5\r\n" + SNAP_TEXT
    with pytest.raises(DataError) as err:
        read_checkins(write_file("cr.txt", text), "snap")
    assert (err.value.line, err.value.field) == (4, "latitude")
    result = read_checkins(write_file("cr.txt", text), "snap", skip_bad=True)
    assert result.skipped == 1 and len(result.table) == 6


def test_quoted_csv_fields(write_file):
    text = (
        "user_id,location_id,latitude,longitude,timestamp,category\n"
        '1,10,40.7,-73.9,2012-06-16T21:29:30Z,"Bar, Pub"\n'
        '1,11,40.8,-73.8,2012-06-16T22:29:30Z,"Multi\nline ""quoted"""\n'
        "2,10,40.7,-73.9,2012-06-16T23:29:30Z,Plain\n"
        "2,12,x,-73.9,2012-06-16T23:29:30Z,Plain\n"
    )
    path = write_file("q.csv", text)
    with pytest.raises(DataError) as err:
        read_checkins(path, "csv")
    assert (err.value.line, err.value.field) == (6, "latitude")  # the quoted newline counts
    table = read_checkins(path, "csv", skip_bad=True).table
    assert table["category"].tolist() == ["Bar, Pub", 'Multi\nline "quoted"', "Plain"]


def test_utf8_bom_and_explicit_encodings(write_file):
    table = read_checkins(write_file("bom.csv", "\ufeff" + CSV_TEXT, "utf-8"), "csv").table
    assert len(table) == 3
    text = CSV_TEXT.replace("2,10,", "zo\xeb,10,")
    path = write_file("u16.csv", text, "utf-16")
    table = read_checkins(path, "csv", encoding="utf-16").table
    assert table["user_id"].tolist() == ["1", "1", "zo\xeb"]
    path = write_file("l1.csv", text, "latin-1")
    assert read_checkins(path, "csv", encoding="latin-1").table["user_id"].iloc[2] == "zo\xeb"


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_compressed_files(write_file, compress):
    path = write_file("c.csv.gz", compress(CSV_TEXT.encode()))
    assert read_checkins(path, "csv").table["timestamp"].tolist() == [6000, 9600, 1800]


@pytest.mark.parametrize(
    ("format", "text", "encoding"),
    [("csv", CSV_TEXT, "utf-8"), ("snap", SNAP_TEXT, "utf-8"), ("tsmc2014", TSMC_TEXT, "latin-1")],
)
def test_stdin(monkeypatch, write_file, format, text, encoding):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode(encoding))))
    result = read_checkins("-", format)
    assert result.path == "<stdin>"
    from_file = read_checkins(write_file("same.txt", text, encoding), format)
    pd.testing.assert_frame_equal(assert_canonical(result), from_file.table)


def test_stdin_text_stream_without_buffer(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(SNAP_TEXT))
    assert read_checkins("-", "snap").table["user_id"].tolist() == [0, 0, 12]


def test_stdin_errors_name_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(SNAP_TEXT + "1\tnope\t1\t2\t3\n"))
    with pytest.raises(DataError) as err:
        read_checkins("-", "snap")
    assert str(err.value).startswith("<stdin>:4: field 'check-in time'")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkins(tmp_path / "nope.csv", "csv")
