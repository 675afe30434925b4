"""``fedgeo data inspect`` and the shared data options of the command line."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys

import pytest

from fedgeo.cli.common import add_data_arguments, parse_columns, read_from_args
from fedgeo.cli.errors import UsageError

# user 1: two places, two check-ins each, 1 degree of longitude apart on the equator;
# user 2: one place three times. Times in minutes.
CSV = (
    "user_id,location_id,latitude,longitude,time_min\n"
    "1,10,0.0,10.0,0\n"
    "1,11,0.0,11.0,60\n"
    "1,10,0.0,10.0,120\n"
    "1,11,0.0,11.0,180\n"
    "2,20,45.0,7.0,1440\n"
    "2,20,45.0,7.0,2880\n"
    "2,20,45.0,7.0,4320\n"
)
HALF_DEGREE_KM = math.pi * 6371.0088 / 360.0


def inspect_json(run_cli, *args) -> dict:
    status, out, err = run_cli(["data", "inspect", *args, "--json"])
    assert status == 0, err
    return json.loads(out)


def test_inspect_json_counts_and_per_user_statistics(write_file, run_cli):
    summary = inspect_json(run_cli, write_file("c.csv", CSV))
    assert (summary["checkins"], summary["users"], summary["locations"]) == (7, 2, 3)
    assert summary["skipped_rows"] == 0 and summary["format"] == "csv"
    assert summary["time"] == {
        "first": "1970-01-01T00:00:00Z",
        "last": "1970-01-04T00:00:00Z",
        "span_days": 3.0,
        "relative": True,
    }
    per_user = summary["per_user"]
    assert per_user["checkins"] == {"min": 3.0, "median": 3.5, "mean": 3.5, "max": 4.0}
    assert per_user["distinct_locations"] == {"min": 1.0, "median": 1.5, "mean": 1.5, "max": 2.0}
    assert per_user["entropy"]["min"] == 0.0 and per_user["entropy"]["max"] == pytest.approx(1.0)
    rg = per_user["radius_of_gyration_km"]
    assert rg["min"] == pytest.approx(0.0, abs=1e-6)
    assert rg["max"] == pytest.approx(HALF_DEGREE_KM, rel=1e-6)
    assert summary["columns"]["timestamp"] == "time_min"


def test_inspect_human_output(write_file, run_cli):
    status, out, err = run_cli(["data", "inspect", write_file("c.csv", CSV)])
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].endswith("c.csv (format csv)")
    rows = {line[:18].strip(): line[18:].split() for line in lines[1:9]}
    assert rows["check-ins"] == ["7"] and rows["users"] == ["2"] and rows["locations"] == ["3"]
    assert rows["time span"] == ["3.0", "days"]
    assert "relative times" in out
    stats = {line[:26].strip(): line[26:].split() for line in lines if line.startswith("  ")}
    assert stats["check-ins"] == ["3", "3.5", "3.5", "4"]
    assert stats["normalized entropy"][-1] == "1.000"


def test_inspect_tsmc2014_reports_categories_and_utc_times(write_file, run_cli):
    text = (
        "7\tvA\tc1\tBar\t40.7\t-73.9\t-240\tSat Jun 16 21:29:30 +0000 2012\n"
        "8\tvB\tc2\tCaf\xe9\t40.8\t-73.8\t-240\tSun Jun 17 21:29:30 +0000 2012\n"
    )
    path = write_file("t.txt", text, encoding="latin-1")
    summary = inspect_json(run_cli, path, "--format", "tsmc2014")
    assert summary["categories"] == 2
    assert summary["time"]["first"] == "2012-06-16T21:29:30Z"
    assert summary["time"]["relative"] is False and summary["time"]["span_days"] == 1.0


def test_inspect_with_column_mapping_and_time_unit(write_file, run_cli):
    path = write_file("m.csv", "uid,loc,lat,lon,t\na,x,1,2,1339882170000\nb,y,1,2,1339968570000\n")
    summary = inspect_json(
        run_cli,
        path,
        "--columns",
        "user_id=uid,location_id=loc",
        "--columns",
        "time=t",
        "--time-unit",
        "ms",
    )
    assert summary["users"] == 2 and summary["time"]["first"] == "2012-06-16T21:29:30Z"
    assert summary["columns"]["user_id"] == "uid" and summary["columns"]["timestamp"] == "t"


def test_inspect_skip_bad_rows(write_file, run_cli):
    path = write_file("bad.csv", CSV + "3,30,95,1,5\n3,30,1,1\n")
    status, out, err = run_cli(["data", "inspect", path, "--skip-bad-rows", "--json"])
    assert status == 0
    assert err.startswith(f"fedgeo: skipped 2 bad rows (first: {path}:9: field 'latitude'")
    summary = json.loads(out)
    assert summary["skipped_rows"] == 2 and summary["checkins"] == 7
    assert summary["skipped_examples"][1].startswith(f"{path}:10: field 'time_min'")


def test_inspect_stdin(monkeypatch, run_cli):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(CSV.encode())))
    summary = inspect_json(run_cli, "-")
    assert summary["path"] == "<stdin>" and summary["checkins"] == 7


def test_inspect_real_nyc(shared_file, run_cli):
    summary = inspect_json(run_cli, shared_file("foursquare-nyc/checkins.csv"))
    assert (summary["checkins"], summary["users"], summary["locations"]) == (147_938, 1_083, 5_135)
    # the data README: 17 to 2,515 check-ins per user (median 93), 5 to 245 places (median 31)
    assert summary["per_user"]["checkins"]["min"] == 17
    assert summary["per_user"]["checkins"]["max"] == 2_515
    assert summary["per_user"]["checkins"]["median"] == 93
    assert summary["per_user"]["distinct_locations"]["min"] == 5
    assert summary["per_user"]["distinct_locations"]["max"] == 245
    assert summary["per_user"]["distinct_locations"]["median"] == 31
    assert 0 < summary["per_user"]["entropy"]["median"] < 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--columns", "user_id"], "expected NAME=COLUMN pairs"),
        (["--columns", "user_id=uid,=t"], "expected NAME=COLUMN pairs"),
        (["--columns", "person=uid"], "unknown column name 'person'"),
        (["--format", "snap", "--time-unit", "s"], "apply to --format csv"),
        (["--encoding", "klingon"], "unknown encoding"),
    ],
)
def test_wrong_option_values_are_usage_errors(write_file, run_cli, argv, says):
    status, out, err = run_cli(["data", "inspect", write_file("c.csv", CSV), *argv])
    assert status == 2 and out == ""
    assert err.startswith("fedgeo: error: ") and says in err and err.count("\n") == 1


def test_missing_file_exit_status_2(tmp_path, run_cli):
    status, _, err = run_cli(["data", "inspect", tmp_path / "absent.csv"])
    assert status == 2 and err.startswith("fedgeo: error: ") and "file not found" in err


def test_parse_columns():
    assert parse_columns(None) == {}
    assert parse_columns(["user_id = uid, time=t", "category=kind"]) == {
        "user_id": "uid",
        "timestamp": "t",
        "category": "kind",
    }
    with pytest.raises(UsageError, match="got 'latitude'"):
        parse_columns("latitude")


def test_add_data_arguments_and_read_from_args(write_file, capsys):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, required=True)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    capsys.readouterr()
    path = write_file("c.csv", CSV + "9,9,x,1,1\n")
    args = parser.parse_args(["--data", str(path), "--skip-bad-rows"])
    result = read_from_args(args)
    assert len(result.table) == 7 and result.skipped == 1
    assert capsys.readouterr().err.startswith("fedgeo: skipped 1 bad row (first: ")

    optional = argparse.ArgumentParser()
    add_data_arguments(optional, required=False)
    args = optional.parse_args([])
    assert args.data is None and args.format == "csv"
    with pytest.raises(UsageError, match="--data"):
        read_from_args(args)
