"""The device agent's check-in store and the portable global model file."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.agent import store as store_module
from client.agent.store import CheckinStore
from fedgeo.data.dataset import Places
from fedgeo.data.errors import DataError
from fedgeo.data.protocol import preprocess
from fedgeo.data.synthetic import SyntheticConfig, generate_city
from fedgeo.data.table import validate_table
from fedgeo.models.portable import (
    METADATA_KEY,
    load_global_model,
    model_metadata,
    places_checksum,
    save_global_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def city() -> tuple[pd.DataFrame, Places]:
    """A small synthetic city (check-ins of 3 users) and its public place table."""
    table = generate_city(SyntheticConfig(num_users=3, num_places=40, days=14, seed=3))
    return table, preprocess(table).places


def user_csv(table: pd.DataFrame, user: int, path: Path) -> Path:
    table[table["user_id"] == user].to_csv(path, index=False)
    return path


def test_ingest_twice_adds_nothing_the_second_time(city, tmp_path: Path) -> None:
    table, places = city
    source = user_csv(table, 1, tmp_path / "u1.csv")
    store = CheckinStore(tmp_path / "store.sqlite")
    n = int((table["user_id"] == 1).sum())
    first = store.ingest(source, "csv", places=places)
    second = store.ingest(source, "csv", places=places)
    assert (first.added, first.duplicates) == (n, 0)
    assert (second.added, second.duplicates) == (0, n)
    assert store.count() == n
    # Overlapping batches: only the new rows are added.
    rows = table[table["user_id"] == 1]
    rows.iloc[: n // 2].to_csv(tmp_path / "head.csv", index=False)
    other = CheckinStore(tmp_path / "other.sqlite")
    assert other.ingest(tmp_path / "head.csv", places=places).added == n // 2
    assert other.ingest(source, places=places).added == n - n // 2
    assert other.count() == n


def test_to_table_gives_back_the_canonical_table(city, tmp_path: Path) -> None:
    table, places = city
    store = CheckinStore(tmp_path / "store.sqlite")
    store.ingest(user_csv(table, 2, tmp_path / "u2.csv"), places=places)
    got = validate_table(store.to_table())
    want = table[table["user_id"] == 2].reset_index(drop=True)
    assert got["user_id"].dtype == np.int64 and got["location_id"].dtype == np.int64
    pd.testing.assert_frame_equal(got, want[got.columns.tolist()], check_dtype=False)
    assert got["timestamp"].dtype == np.int64
    assert got["tz_offset_min"].dtype == np.int32
    summary = store.summary()
    assert summary.rows == len(want)
    assert summary.distinct_places == want["location_id"].nunique()
    assert (summary.first_time, summary.last_time) == (
        int(want["timestamp"].min()),
        int(want["timestamp"].max()),
    )
    assert summary.user_id == "2" and summary.batches == 1


def test_absent_store_reads_as_empty(tmp_path: Path) -> None:
    store = CheckinStore(tmp_path / "none.sqlite")
    assert store.count() == 0 and len(store.to_table()) == 0
    assert store.summary().rows == 0
    assert not (tmp_path / "none.sqlite").exists()


def test_failed_ingest_leaves_the_store_as_it_was(city, tmp_path, monkeypatch) -> None:
    table, places = city
    store = CheckinStore(tmp_path / "store.sqlite")
    rows = table[table["user_id"] == 1]
    rows.iloc[:5].to_csv(tmp_path / "a.csv", index=False)
    store.ingest(tmp_path / "a.csv", places=places)
    before = store.to_table()
    calls = []
    real = store_module._insert_chunk

    def failing(conn, chunk):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise OSError("disk went away")
        real(conn, chunk)

    monkeypatch.setattr(store_module, "CHUNK_ROWS", 3)
    monkeypatch.setattr(store_module, "_insert_chunk", failing)
    with pytest.raises(OSError, match="disk went away"):
        store.ingest(user_csv(table, 1, tmp_path / "u1.csv"), places=places)
    assert len(calls) == 2  # rows of the first chunk were written, then undone
    pd.testing.assert_frame_equal(store.to_table(), before)
    assert store.summary().batches == 1


def test_killed_ingest_leaves_the_store_as_it_was(city, tmp_path: Path) -> None:
    """A process killed mid-transaction (``os._exit``: no cleanup at all)."""
    table, places = city
    db = tmp_path / "store.sqlite"
    rows = table[table["user_id"] == 1]
    rows.iloc[:4].to_csv(tmp_path / "a.csv", index=False)
    CheckinStore(db).ingest(tmp_path / "a.csv", places=places)
    source = user_csv(table, 1, tmp_path / "u1.csv")
    script = textwrap.dedent(
        f"""
        import os
        from client.agent import store as s
        real, calls = s._insert_chunk, []
        def dying(conn, chunk):
            calls.append(1)
            real(conn, chunk)
            if len(calls) == 3:
                os._exit(9)
        s.CHUNK_ROWS = 2
        s._insert_chunk = dying
        s.CheckinStore({str(db)!r}).ingest({str(source)!r})
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, timeout=120
    )
    assert done.returncode == 9, done.stderr.decode()
    store = CheckinStore(db)
    assert store.count() == 4
    assert store.summary().batches == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert store.ingest(source, places=places).added == len(rows) - 4


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HEADER = "user_id,location_id,latitude,longitude,timestamp"
GOOD = [
    "7,a,40.70,-74.00,1704067200",
    "7,b,40.71,-74.01,1704070800",
    "7,a,40.70,-74.00,1704074400",
]
PLACES = Places(
    ids=np.array(["a", "b", "c"], dtype=object),
    latitude=np.array([40.70, 40.71, 40.72]),
    longitude=np.array([-74.00, -74.01, -74.02]),
)


def test_a_bad_row_refuses_the_whole_batch(tmp_path: Path) -> None:
    store = CheckinStore(tmp_path / "store.sqlite")
    store.ingest(write(tmp_path, "ok.csv", [HEADER, GOOD[0]]), places=PLACES)
    bad = write(tmp_path, "bad.csv", [HEADER, GOOD[1], "7,b,400.0,-74.01,1704078000", GOOD[2]])
    with pytest.raises(DataError) as caught:
        store.ingest(bad, places=PLACES)
    err = caught.value
    assert (err.path, err.line, err.field) == (str(bad), 3, "latitude")
    assert store.count() == 1


def test_skip_bad_rows_keeps_the_good_ones_and_reports_the_bad(tmp_path: Path) -> None:
    store = CheckinStore(tmp_path / "store.sqlite")
    bad = write(
        tmp_path, "bad.csv", [HEADER, GOOD[0], "7,,40.7,-74.0,1704078000", GOOD[1], GOOD[2]]
    )
    report = store.ingest(bad, skip_bad=True, places=PLACES)
    assert (report.added, report.rejected_count) == (3, 1)
    assert report.rejected[0].startswith(f"{bad}:3: field 'location_id'")
    assert store.count() == 3


def test_places_outside_the_public_table_are_bad_rows(tmp_path: Path) -> None:
    store = CheckinStore(tmp_path / "store.sqlite")
    path = write(tmp_path, "x.csv", [HEADER, GOOD[0], "7,zz,40.7,-74.0,1704078000", GOOD[1]])
    with pytest.raises(DataError, match="'zz' is not in the public place table") as caught:
        store.ingest(path, places=PLACES)
    assert caught.value.field == "location_id" and caught.value.path == str(path)
    assert store.count() == 0
    report = store.ingest(path, skip_bad=True, places=PLACES)
    assert (report.added, report.rejected_count) == (2, 1)
    assert "'zz'" in report.rejected[0]


def test_a_device_holds_one_user(tmp_path: Path) -> None:
    store = CheckinStore(tmp_path / "store.sqlite")
    store.ingest(write(tmp_path, "u7.csv", [HEADER, *GOOD]))
    other = write(tmp_path, "u8.csv", [HEADER, "8,c,40.72,-74.02,1704067200"])
    with pytest.raises(DataError, match="user id '8' is not this store's user '7'") as caught:
        store.ingest(other)
    assert caught.value.field == "user_id"
    mixed = write(tmp_path, "mixed.csv", [HEADER, GOOD[0], "8,c,40.72,-74.02,1704067200"])
    fresh = CheckinStore(tmp_path / "fresh.sqlite")
    with pytest.raises(DataError, match="2 users"):
        fresh.ingest(mixed)
    assert store.count() == 3 and fresh.count() == 0


def test_ingest_from_standard_input(tmp_path: Path, monkeypatch) -> None:
    text = "\n".join([HEADER, *GOOD]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    store = CheckinStore(tmp_path / "store.sqlite")
    report = store.ingest("-", places=PLACES)
    assert (report.source, report.added) == ("<stdin>", 3)
    assert store.to_table()["location_id"].tolist() == ["a", "b", "a"]


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="not a FedGeo check-in store") as caught:
        CheckinStore(path).count()
    assert caught.value.path == str(path)


# --- the portable global model file -----------------------------------------------


def metadata(places: Places = PLACES, **changes) -> dict:
    meta = model_metadata(
        model_config={"embedding_dim": 8, "hidden_dim": 8},
        prior_config={"k": 2},
        prior_checksum="abc",
        places=places,
        server_round=3,
        run_key="run-1",
    )
    meta.update(changes)
    return meta


def test_global_model_round_trip(tmp_path: Path) -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)}
    path = save_global_model(tmp_path / "m" / "global.npz", arrays, metadata())
    got, meta = load_global_model(path)
    assert set(got) == {"w", "b"}
    np.testing.assert_array_equal(got["w"], arrays["w"])
    assert got["w"].dtype == np.float32
    assert meta["round"] == 3 and meta["run_key"] == "run-1"
    assert meta["num_places"] == 3 and meta["places_checksum"] == places_checksum(PLACES)
    assert meta["format"] == "fedgeo-global-model" and meta["fedgeo_version"]
    assert not list(path.parent.glob("*.tmp"))


def test_places_checksum_tells_tables_apart() -> None:
    moved = Places(PLACES.ids, PLACES.latitude + [0, 0, 1e-6], PLACES.longitude)
    assert places_checksum(moved) != places_checksum(PLACES)
    assert places_checksum(PLACES) == places_checksum(Places(*PLACES.__dict__.values()))


def pickled(path: Path) -> None:
    """A file with valid metadata and an object array (needs pickle to load)."""
    with np.load(path) as data:
        meta = data[METADATA_KEY]
    np.savez(path, w=np.array([{"x": 1}], dtype=object), **{METADATA_KEY: meta})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable global model file"),
        (lambda p: p.write_bytes(b"\x00garbage" * 50), "not a readable global model file"),
        (lambda p: np.savez(p, w=np.ones(2)), "no metadata"),
        (lambda p: pickled(p), "not a readable global model file"),
    ],
)
def test_a_corrupt_model_file_is_refused_with_its_name(tmp_path, damage, message) -> None:
    path = save_global_model(tmp_path / "global.npz", {"w": np.ones(2)}, metadata())
    damage(path)
    with pytest.raises(DataError, match=message) as caught:
        load_global_model(path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.parametrize(
    ("field", "value"),
    [("round", "three"), ("num_places", 0), ("model_config", {"no_such_option": 1})],
)
def test_bad_metadata_names_the_field(tmp_path: Path, field: str, value) -> None:
    path = tmp_path / "global.npz"
    meta = {**metadata(), "format": "fedgeo-global-model", "format_version": 1, field: value}
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, w=np.ones(2), **{METADATA_KEY: blob})
    with pytest.raises(DataError) as caught:
        load_global_model(path)
    assert caught.value.field == field and caught.value.path == str(path)
    with pytest.raises(DataError):
        save_global_model(tmp_path / "other.npz", {"w": np.ones(2)}, {**metadata(), field: value})


def test_missing_model_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_global_model(tmp_path / "absent.npz")
    assert not os.path.exists(tmp_path / "absent.npz")
