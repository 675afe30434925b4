"""Bad input: every kind of damage gives a DataError naming file, line and field, through
the library and through the ``fedgeo`` command; ``skip_bad`` drops and counts bad rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgeo.data.errors import DataError
from fedgeo.data.readers import read_checkins
from fedgeo.data.table import validate_table

CSV_GOOD = (
    "user_id,location_id,latitude,longitude,time_min\n"
    "1,10,40.70,-73.90,100\n"
    "1,11,40.80,-73.80,160\n"
    "2,10,40.70,-73.90,30\n"
)
SNAP_GOOD = (
    "0\t2010-10-19T23:55:27Z\t30.2500\t-97.7500\t1001\n"
    "0\t2010-10-18T22:17:43Z\t30.2600\t-97.7400\t1002\n"
    "12\t2010-10-17T23:42:03Z\t30.2700\t-97.7300\t1003\n"
)
TSMC_GOOD = (
    "7\tvA01\tc01\tCoffee Shop\t40.7000\t-73.9000\t-240\tSat Jun 16 21:29:30 +0000 2012\n"
    "7\tvB02\tc02\tBar\t40.7100\t-73.9100\t-240\tSun Jun 17 08:00:00 +0000 2012\n"
    "9\tvA01\tc01\tCoffee Shop\t40.7000\t-73.9000\t-300\tMon Dec 03 10:15:00 +0000 2012\n"
)
GOOD = {"csv": CSV_GOOD, "snap": SNAP_GOOD, "tsmc2014": TSMC_GOOD}
TSMC_ROW = "9\tvC03\tc01\tBar\t{lat}\t{lon}\t{tz}\t{time}\n"


def tsmc_row(lat="40.7", lon="-73.9", tz="-240", time="Tue Dec 04 10:15:00 +0000 2012"):
    return TSMC_ROW.format(lat=lat, lon=lon, tz=tz, time=time)


@dataclass
class Case:
    """A damaged file: the first problem is at ``line`` in ``field``."""

    id: str
    format: str
    content: str | bytes
    line: int
    field: str | None
    says: str


C, S, T = CSV_GOOD, SNAP_GOOD, TSMC_GOOD
CSV_ISO = "user_id,location_id,lat,lon,timestamp\n1,2,3,4,2012-06-16T10:00:00Z\n"
ORDER = "user_id,location_id,lat,lon,time_min\n1,2,3,4,5\n1,2,3,x,5\n1,2,3\n"
LATIN1 = CSV_GOOD.replace("2,10,", "2,caf\xe9,").encode("latin-1")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"
G = "1\t2010-10-19T23:55:27Z"  # the start of a SNAP row

# fmt: off
ROW_CASES = [
    # malformed rows: wrong number of fields, wrong delimiter
    Case("csv-too-few-fields", "csv", C + "2,11,40.8\n", 5, "longitude", "found 3"),
    Case("csv-too-many-fields", "csv", C + "2,11,40.8,-73.8,5,9\n", 5, "time_min", "found 6"),
    Case("csv-wrong-delimiter", "csv", C + "2;11;40.8;-73.8;5\n", 5, "location_id", "semicolons"),
    Case("csv-unclosed-quote", "csv", C + '2,"11,40.8,-73.8,5\n', 5, "latitude", "unclosed quote"),
    Case("snap-too-few-fields", "snap", S + G + "\t30.1\n", 4, "longitude", "found 3"),
    Case("snap-wrong-delimiter", "snap", S + "1,2010-10-19,30,-97,5\n", 4, "check-in time",
         "commas"),
    Case("tsmc-too-many-fields", "tsmc2014", T + tsmc_row().replace("\n", "\tx\n"), 4,
         "utcTimestamp", "found 9"),
    # unparsable time
    Case("csv-bad-time", "csv", C + "2,11,40.8,-73.8,soon\n", 5, "time_min",
         "not a number of minutes"),
    Case("csv-empty-time", "csv", C + "2,11,40.8,-73.8,\n", 5, "time_min", "empty time"),
    Case("csv-bad-iso-time", "csv", CSV_ISO + "1,2,3,4,2012-02-30T10:00:00Z\n", 3, "timestamp",
         "cannot parse time"),
    Case("snap-bad-time", "snap", S + "1\t19/10/2010 23:55\t30.1\t-97.1\t5\n", 4,
         "check-in time", "cannot parse time"),
    Case("tsmc-bad-time", "tsmc2014", T + tsmc_row(time="Tue Dec 04 25:15:00 +0000 2012"), 4,
         "utcTimestamp", "cannot parse time"),
    # bad numbers and ids
    Case("csv-bad-number", "csv", C + "2,11,40.8.1,-73.8,5\n", 5, "latitude",
         "not a number: '40.8.1'"),
    Case("snap-bad-number", "snap", S + G + "\t30.1\t-97,1\t5\n", 4, "longitude", "not a number"),
    Case("tsmc-bad-offset", "tsmc2014", T + tsmc_row(tz="EST"), 4, "timezoneOffset",
         "not a number"),
    Case("tsmc-fractional-offset", "tsmc2014", T + tsmc_row(tz="-240.5"), 4, "timezoneOffset",
         "whole number"),
    Case("csv-empty-id", "csv", C + "2, ,40.8,-73.8,5\n", 5, "location_id", "empty id"),
    # coordinates out of range, NaN, infinite, empty, and SNAP's (0, 0)
    Case("csv-latitude-above-90", "csv", C + "2,11,90.5,-73.8,5\n", 5, "latitude",
         "outside [-90, 90]"),
    Case("csv-longitude-below-180", "csv", C + "2,11,40,-180.01,5\n", 5, "longitude",
         "outside [-180, 180]"),
    Case("tsmc-latitude-below-90", "tsmc2014", T + tsmc_row(lat="-91"), 4, "latitude",
         "outside [-90, 90]"),
    Case("snap-longitude-above-180", "snap", S + G + "\t30.1\t181\t5\n", 4, "longitude",
         "outside [-180, 180]"),
    Case("csv-nan-latitude", "csv", C + "2,11,NaN,-73.8,5\n", 5, "latitude", "NaN"),
    Case("snap-nan-longitude", "snap", S + G + "\t30.1\tnan\t5\n", 4, "longitude", "NaN"),
    Case("csv-infinite-longitude", "csv", C + "2,11,40,inf,5\n", 5, "longitude", "infinite"),
    Case("snap-empty-coordinates", "snap", S + G + "\t\t\t5\n", 4, "latitude", "empty latitude"),
    Case("snap-zero-coordinates", "snap", S + G + "\t0.0\t0.0\t5\n", 4, "latitude", "(0, 0)"),
    # a truncated last line (no newline at the end)
    Case("csv-truncated-last-line", "csv", C + "2,11,40.8,-7", 5, "time_min", "truncated"),
    Case("snap-truncated-last-line", "snap", S + "1\t2010-10-19T23:5", 4, "latitude", "truncated"),
    Case("tsmc-truncated-last-line", "tsmc2014", T + tsmc_row()[:-12], 4, "utcTimestamp",
         "truncated"),
    # the first bad row in file order is reported, whatever its kind of problem
    Case("first-problem-in-file-order", "csv", ORDER, 3, "lon", "not a number"),
]
FILE_CASES = [
    Case("csv-empty-file", "csv", "", 1, None, "empty file"),
    Case("snap-blank-lines-only", "snap", "\n \n\n", 1, None, "empty file"),
    Case("csv-header-only", "csv", C.splitlines(keepends=True)[0], 2, None, "no data rows"),
    Case("csv-missing-column", "csv", "user_id,location_id,latitude,time_min\n1,2,3,4\n", 1,
         "longitude", "missing column"),
    Case("csv-missing-time-column", "csv", "user_id,location_id,lat,lon,when\n1,2,3,4,5\n", 1,
         "timestamp", "--columns timestamp=NAME"),
    Case("csv-tab-separated-file", "csv", "user\tlocation\n" + S, 1, "user_id", "tab-separated"),
    Case("csv-raw-tsmc2014-latin1-file", "csv", (T + T.replace("Bar", "Caf\xe9")).encode("latin-1"),
         1, None, "tab-separated, not comma-separated"),
    Case("csv-utf16-with-bom", "csv", C.encode("utf-16"), 1, None, "--encoding utf-16"),
    Case("csv-utf16-without-bom", "csv", C.encode("utf-16-le"), 1, None, "--encoding utf-16-le"),
    Case("snap-utf16-with-bom", "snap", S.encode("utf-16"), 1, None, "UTF-16"),
    Case("tsmc-utf16-with-bom", "tsmc2014", T.encode("utf-16"), 1, None, "UTF-16"),
    Case("csv-latin1-bytes", "csv", LATIN1, 4, "location_id", "--encoding latin-1"),
    Case("csv-zip-archive", "csv", b"PK\x03\x04\x14\x00\x00\x00\x08\x00", 1, None, "zip"),
    Case("snap-binary-bytes", "snap", PNG, 3, None, "binary data"),
    Case("csv-all-rows-bad", "csv", "user_id,location_id,lat,lon,time_min\n1,2,x,4,5\n", 2, "lat",
         "not a number"),
]
# fmt: on
CASES = ROW_CASES + FILE_CASES


def write_case(directory: Path, case: Case) -> Path:
    path = directory / f"{case.id}.txt"
    content = case.content
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def where(path: Path, case: Case) -> str:
    """The start of the error line: file, line and field."""
    text = f"{path}:{case.line}: "
    return text + (f"field '{case.field}': " if case.field else "")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_read_checkins_names_file_line_and_field(tmp_path, case):
    path = write_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        read_checkins(path, case.format)
    message = str(err.value)
    assert message.startswith(where(path, case)), message
    assert case.says in message
    assert "\n" not in message
    assert (err.value.path, err.value.line, err.value.field) == (str(path), case.line, case.field)


@pytest.mark.parametrize("case", ROW_CASES, ids=[c.id for c in ROW_CASES])
def test_skip_bad_drops_and_counts_bad_rows(tmp_path, case):
    path = write_case(tmp_path, case)
    result = read_checkins(path, case.format, skip_bad=True)
    bad_rows = 2 if case.id == "first-problem-in-file-order" else 1
    assert result.skipped == bad_rows
    assert result.skipped_examples[0].startswith(where(path, case))
    validate_table(result.table)
    if case.content.startswith(GOOD[case.format]):  # one bad row after the good ones
        good_path = tmp_path / "good.txt"
        good_path.write_text(GOOD[case.format])
        assert result.table.equals(read_checkins(good_path, case.format).table)


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.id for c in FILE_CASES])
def test_skip_bad_still_fails_for_whole_file_problems(tmp_path, case):
    path = write_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        read_checkins(path, case.format, skip_bad=True)
    assert str(err.value).startswith(str(path))


def test_skipped_rows_are_counted_and_examples_kept_in_file_order(tmp_path):
    rows = ["user_id,location_id,lat,lon,time_min"]
    for i in range(40):
        rows.append(f"{i},{i},{'x' if i % 4 == 0 else 1.5},2.5,{i}")
    rows.append("7,7,1")  # structural problem after value problems
    path = tmp_path / "many.csv"
    path.write_text("\n".join(rows) + "\n")
    result = read_checkins(path, "csv", skip_bad=True)
    assert result.skipped == 11 and len(result.table) == 30
    assert [int(e.split(":")[1]) for e in result.skipped_examples] == [2, 6, 10, 14, 18]
    assert not (result.table["user_id"] % 4 == 0).any()
    with pytest.raises(DataError, match=r"\[11 bad rows of 41; "):
        read_checkins(path, "csv")


# --- through the command line --------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_reports_one_line_and_exit_status_2(tmp_path, run_cli, case):
    path = write_case(tmp_path, case)
    status, out, err = run_cli(["data", "inspect", path, "--format", case.format])
    assert status == 2
    assert out == ""
    assert err.startswith("fedgeo: error: " + where(path, case)), err
    assert case.says in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("case", ROW_CASES[:6], ids=[c.id for c in ROW_CASES[:6]])
def test_cli_skip_bad_rows_reports_skipped(tmp_path, run_cli, case):
    path = write_case(tmp_path, case)
    status, out, err = run_cli(
        ["data", "inspect", path, "--format", case.format, "--skip-bad-rows"]
    )
    assert status == 0
    assert err.startswith("fedgeo: skipped 1 bad row (first: " + where(path, case)), err
    assert "skipped rows" in out


# --- property tests: random damage never escapes as another exception ----------------------

# (0, 0) is SNAP's "unknown location" mark, so valid rows avoid exact zeros.
latitude = st.floats(-89.9, 89.9).map(lambda x: round(x, 4)).filter(lambda x: x != 0)
longitude = st.floats(-179.9, 179.9).map(lambda x: round(x, 4)).filter(lambda x: x != 0)
rows_strategy = st.lists(
    st.tuples(
        st.integers(0, 50),
        st.integers(0, 10_000),
        latitude,
        longitude,
        st.integers(0, 2_000_000_000),
    ),
    min_size=2,
    max_size=8,
)
garbage = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=8)
plain_garbage = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters='",\t'
    ),
    min_size=0,
    max_size=8,
)


def render(rows, fmt: str) -> list[list[str]]:
    out = []
    for user, place, lat, lon, t in rows:
        if fmt == "csv":
            out.append([str(user), str(place), repr(lat), repr(lon), str(t)])
        else:
            iso = np.datetime64(t, "s").astype(str) + "Z"
            out.append([str(user), iso, repr(lat), repr(lon), str(place)])
    return out


def corrupt(fields: list[list[str]], fmt: str, data) -> int:
    """Damage one row in place; return its index."""
    r = data.draw(st.integers(0, len(fields) - 1), label="row")
    kind = data.draw(st.sampled_from(["delete", "garbage", "range"]), label="kind")
    numeric = [2, 3, 4] if fmt == "csv" else [1, 2, 3]  # lat, lon, time
    if kind == "delete":
        del fields[r][data.draw(st.integers(0, len(fields[r]) - 1), label="field")]
    elif kind == "garbage":
        k = data.draw(st.sampled_from(numeric), label="field")
        fields[r][k] = data.draw(data.draw(st.sampled_from([garbage, plain_garbage])), label="text")
    else:
        k = data.draw(st.sampled_from(numeric[:2]), label="field")
        limit = 90.0 if k == numeric[0] else 180.0
        value = data.draw(st.floats(limit + 1e-6, 1e6) | st.floats(-1e6, -limit - 1e-6))
        fields[r][k] = repr(value)
    return r


def text_of(fields, fmt: str) -> str:
    sep = "," if fmt == "csv" else "\t"
    header = "user_id,location_id,latitude,longitude,time_s\n" if fmt == "csv" else ""
    return header + "".join(sep.join(f) + "\n" for f in fields)


def assert_valid(table, n_rows: int) -> None:
    validate_table(table)
    assert len(table) <= n_rows
    assert table["timestamp"].dtype == np.int64


PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY_SETTINGS
@given(fmt=st.sampled_from(["csv", "snap"]), rows=rows_strategy, data=st.data())
def test_random_damage_gives_data_error_or_valid_table(tmp_path, fmt, rows, data):
    fields = render(rows, fmt)
    r = corrupt(fields, fmt, data)
    path = tmp_path / f"damaged.{fmt}"
    path.write_bytes(text_of(fields, fmt).encode("utf-8"))
    try:
        result = read_checkins(path, fmt)
    except DataError as err:
        assert str(err).startswith(str(path))
        damaged = fields[r]
        if not any(c in "".join(damaged) for c in '\n\r"\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'):
            assert err.line == r + 1 + (fmt == "csv"), str(err)
    else:
        assert_valid(result.table, len(rows))
        assert len(result.table) == len(rows)


@PROPERTY_SETTINGS
@given(fmt=st.sampled_from(["csv", "snap"]), rows=rows_strategy, data=st.data())
def test_random_damage_with_skip_bad_keeps_exactly_the_good_rows(tmp_path, fmt, rows, data):
    fields = render(rows, fmt)
    kind_text = plain_garbage  # one line stays one line
    r = data.draw(st.integers(0, len(fields) - 1), label="row")
    k = data.draw(st.sampled_from([2, 3, 4] if fmt == "csv" else [1, 2, 3]), label="field")
    fields[r][k] = data.draw(kind_text, label="text")
    path = tmp_path / f"damaged.{fmt}"
    path.write_bytes(text_of(fields, fmt).encode("utf-8"))
    result = read_checkins(path, fmt, skip_bad=True)
    assert_valid(result.table, len(rows))
    assert result.skipped in (0, 1)
    assert len(result.table) + result.skipped == len(rows)
    others = [row for i, row in enumerate(rows) if i != r]
    kept = list(
        result.table[["user_id", "location_id", "latitude", "longitude"]].itertuples(
            index=False, name=None
        )
    )
    expected = [(u, p, lat, lon) for u, p, lat, lon, _ in others]
    if result.skipped:
        assert kept == expected
        assert result.skipped_examples[0].startswith(f"{path}:{r + 1 + (fmt == 'csv')}:")
    else:
        assert [k for i, k in enumerate(kept) if i != r] == expected
