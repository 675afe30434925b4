"""The on-device check-in store: one user's check-ins in a SQLite file.

``ingest`` reads a file (or standard input) with FedGeo's readers, checks the batch
and appends it in **one transaction**: a crash or an error mid-ingest leaves the store
exactly as it was (SQLite rolls back an unfinished transaction when the file is next
opened). Rows are unique over ``(user_id, location_id, timestamp)``, so ingesting the
same check-ins again adds nothing (they are counted as duplicates).

Bad rows (policy): by default a batch with any bad row is refused whole, with a
:class:`~fedgeo.data.errors.DataError` naming file, line and field (exit status 2 in
the CLI), and the store is unchanged. With ``skip_bad=True`` (``--skip-bad-rows``) the
bad rows are dropped, the good ones stored, and the rejected lines reported. A row is
bad when the reader rejects it (missing or malformed field, coordinate out of range,
unreadable time) or when its place is not in the public place table. A device holds
one user: a batch with several user ids, or another user id than the store's, is
always refused.

Ids are stored as text; :meth:`CheckinStore.to_table` returns them as the readers do
(int64 when every id is a plain integer, else strings).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedgeo.data.dataset import Places
from fedgeo.data.errors import DataError
from fedgeo.data.readers import read_checkins
from fedgeo.data.readers.fields import id_values
from fedgeo.data.table import empty_table, validate_table

SCHEMA_VERSION = "1"
CHUNK_ROWS = 5000
"""Rows per ``executemany`` call (all in the same transaction)."""
MAX_REPORTED = 20
"""How many rejected-row messages an :class:`IngestReport` keeps."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    format TEXT NOT NULL,
    ingested_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    rows INTEGER NOT NULL DEFAULT 0,
    added INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS checkins (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    location_id TEXT NOT NULL,
    latitude REAL NOT NULL,
    longitude REAL NOT NULL,
    timestamp INTEGER NOT NULL,
    tz_offset_min INTEGER,
    category TEXT,
    batch INTEGER NOT NULL REFERENCES batches(id),
    UNIQUE (user_id, location_id, timestamp)
);
"""
_INSERT = (
    "INSERT OR IGNORE INTO checkins (user_id, location_id, latitude, longitude, timestamp, "
    "tz_offset_min, category, batch) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class IngestReport:
    """What one ingest did."""

    source: str
    added: int
    """New check-ins stored."""
    duplicates: int
    """Check-ins already in the store (or repeated within the batch): not stored again."""
    rejected: list[str] = field(default_factory=list)
    """Messages for rejected rows (``file:line: field 'x': ...``), the first
    :data:`MAX_REPORTED` (reader-rejected rows: the reader's first few)."""
    rejected_count: int = 0
    """How many rows were rejected (only with ``skip_bad``)."""


@dataclass
class StoreSummary:
    """Headline numbers of a store."""

    rows: int
    distinct_places: int
    user_id: str | None
    first_time: int | None
    """UTC seconds of the earliest check-in."""
    last_time: int | None
    batches: int
    last_ingest: str | None
    """When the last batch was ingested (ISO 8601 UTC)."""


class CheckinStore:
    """One user's check-ins in the SQLite file ``path`` (created on first ingest)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- connection --------------------------------------------------------------

    @contextmanager
    def _connect(self, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection in autocommit mode (transactions are explicit); None when the
        file is absent and ``create`` is false."""
        if not create and not self.path.exists():
            yield None
            return
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as err:
            raise DataError(f"cannot open the check-in store: {err}", path=self.path) from None
        try:
            try:
                if create:
                    conn.executescript(_SCHEMA)
                    conn.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                        (SCHEMA_VERSION,),
                    )
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.DatabaseError as err:
                raise DataError(f"not a FedGeo check-in store ({err})", path=self.path) from None
            if row is None or row[0] != SCHEMA_VERSION:
                found = row[0] if row else None
                raise DataError(
                    f"store schema version {found!r}, this FedGeo reads {SCHEMA_VERSION!r}",
                    path=self.path,
                )
            yield conn
        finally:
            conn.close()

    # --- writing -----------------------------------------------------------------

    def ingest(
        self,
        source: str | Path,
        fmt: str = "csv",
        *,
        columns: dict[str, str] | None = None,
        time_unit: str | None = None,
        encoding: str | None = None,
        skip_bad: bool = False,
        places: Places | None = None,
    ) -> IngestReport:
        """Read ``source`` (a path, or ``"-"`` for standard input) and append its
        check-ins (see the module docstring for the bad-row policy).

        ``places``: the public place table; rows at other places are bad rows.
        Raises :class:`DataError` (file, line, field) and leaves the store unchanged
        when the batch is refused; ``FileNotFoundError`` when ``source`` is absent.
        """
        result = read_checkins(
            source,
            fmt,
            columns=columns,
            skip_bad=skip_bad,
            time_unit=time_unit,
            encoding=encoding,
        )
        report = self.add_table(
            result.table, source=result.path, fmt=fmt, skip_bad=skip_bad, places=places
        )
        report.rejected = result.skipped_examples + report.rejected
        report.rejected = report.rejected[:MAX_REPORTED]
        report.rejected_count += result.skipped
        return report

    def add_table(
        self,
        table: pd.DataFrame,
        *,
        source: str = "<table>",
        fmt: str = "table",
        skip_bad: bool = False,
        places: Places | None = None,
    ) -> IngestReport:
        """Append a canonical check-in table as one batch (one transaction)."""
        validate_table(table, source=source)
        table = table.reset_index(drop=True)
        user_ids = table["user_id"].map(str)
        location_ids = table["location_id"].map(str)
        rejected: list[str] = []
        rejected_count = 0
        if places is not None:
            known = location_ids.isin({str(pid) for pid in places.ids}).to_numpy()
            if not known.all():
                bad = np.flatnonzero(~known)
                errors = [
                    DataError(
                        f"place id {location_ids[i]!r} is not in the public place table "
                        f"(data row {i + 1})",
                        path=source,
                        field="location_id",
                    )
                    for i in bad[:MAX_REPORTED]
                ]
                if not skip_bad:
                    n = len(bad)
                    first = errors[0]
                    first.message += (
                        f" [{n} such row{'s' if n != 1 else ''} of {len(table)}; "
                        "--skip-bad-rows drops them]"
                    )
                    raise DataError(first.message, path=source, field="location_id")
                if not known.any():
                    raise DataError(
                        f"no valid check-ins: all {len(table)} rows are at places not in the "
                        f"public place table (first: {errors[0]})",
                        path=source,
                    )
                rejected, rejected_count = [str(e) for e in errors], len(bad)
                table, user_ids, location_ids = (
                    x[known].reset_index(drop=True) for x in (table, user_ids, location_ids)
                )
        users = sorted(set(user_ids))
        if len(users) > 1:
            shown = ", ".join(repr(u) for u in users[:3]) + (", ..." if len(users) > 3 else "")
            raise DataError(
                f"the batch holds check-ins of {len(users)} users ({shown}); a device stores "
                "one user's check-ins",
                path=source,
                field="user_id",
            )
        user = users[0]
        rows = _rows(table, user_ids, location_ids)
        with self._connect(create=True) as conn:
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = conn.execute("SELECT value FROM meta WHERE key = 'user_id'").fetchone()
                if stored is not None and stored[0] != user:
                    raise DataError(
                        f"user id {user!r} is not this store's user {stored[0]!r}: a device "
                        "holds one user's check-ins",
                        path=source,
                        field="user_id",
                    )
                if stored is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('user_id', ?)", (user,))
                batch = conn.execute(
                    "INSERT INTO batches (source, format) VALUES (?, ?)", (source, fmt)
                ).lastrowid
                before = conn.total_changes
                for start in range(0, len(rows), CHUNK_ROWS):
                    _insert_chunk(conn, [(*r, batch) for r in rows[start : start + CHUNK_ROWS]])
                added = conn.total_changes - before
                conn.execute(
                    "UPDATE batches SET rows = ?, added = ?, rejected = ? WHERE id = ?",
                    (len(rows), added, rejected_count, batch),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return IngestReport(source, added, len(rows) - added, rejected, rejected_count)

    # --- reading -----------------------------------------------------------------

    def to_table(self) -> pd.DataFrame:
        """All check-ins as a canonical check-in table, in ingest order.

        ``tz_offset_min`` is present when any row has one (0 where unknown) and
        ``category`` when any row has one. An absent or empty store gives an empty table.
        """
        with self._connect(create=False) as conn:
            if conn is None:
                return empty_table()
            frame = pd.read_sql_query(
                "SELECT user_id, location_id, latitude, longitude, timestamp, tz_offset_min, "
                "category FROM checkins ORDER BY id",
                conn,
            )
        if frame.empty:
            return empty_table()
        out = pd.DataFrame(
            {
                "user_id": id_values(frame["user_id"].astype(str)),
                "location_id": id_values(frame["location_id"].astype(str)),
                "latitude": frame["latitude"].astype(np.float64),
                "longitude": frame["longitude"].astype(np.float64),
                "timestamp": frame["timestamp"].astype(np.int64),
            }
        )
        if frame["tz_offset_min"].notna().any():
            out["tz_offset_min"] = frame["tz_offset_min"].fillna(0).astype(np.int32)
        if frame["category"].notna().any():
            out["category"] = frame["category"].astype(object)
        return out

    def count(self) -> int:
        """Number of check-ins stored."""
        with self._connect(create=False) as conn:
            if conn is None:
                return 0
            return int(conn.execute("SELECT COUNT(*) FROM checkins").fetchone()[0])

    def summary(self) -> StoreSummary:
        """Rows, distinct places, user, time range and ingest history of the store."""
        with self._connect(create=False) as conn:
            if conn is None:
                return StoreSummary(0, 0, None, None, None, 0, None)
            rows, places, first, last = conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT location_id), MIN(timestamp), MAX(timestamp) "
                "FROM checkins"
            ).fetchone()
            user = conn.execute("SELECT value FROM meta WHERE key = 'user_id'").fetchone()
            batches, last_ingest = conn.execute(
                "SELECT COUNT(*), MAX(ingested_at) FROM batches"
            ).fetchone()
        return StoreSummary(
            rows=int(rows),
            distinct_places=int(places),
            user_id=user[0] if user else None,
            first_time=None if first is None else int(first),
            last_time=None if last is None else int(last),
            batches=int(batches),
            last_ingest=last_ingest,
        )


def _insert_chunk(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert rows, ignoring those already stored (a separate function: tests make it
    fail midway to check that a failed ingest leaves the store unchanged)."""
    conn.executemany(_INSERT, rows)


def _rows(table: pd.DataFrame, user_ids: pd.Series, location_ids: pd.Series) -> list[tuple]:
    """The table as SQL rows (without the batch id)."""
    n = len(table)
    tz = (
        [int(v) for v in table["tz_offset_min"].to_numpy()]
        if "tz_offset_min" in table.columns
        else [None] * n
    )
    if "category" in table.columns:
        category = [None if pd.isna(v) else str(v) for v in table["category"]]
    else:
        category = [None] * n
    return list(
        zip(
            user_ids.tolist(),
            location_ids.tolist(),
            table["latitude"].to_numpy(dtype=np.float64).tolist(),
            table["longitude"].to_numpy(dtype=np.float64).tolist(),
            table["timestamp"].to_numpy(dtype=np.int64).tolist(),
            tz,
            category,
            strict=True,
        )
    )
