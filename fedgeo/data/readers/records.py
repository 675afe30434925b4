"""Splitting delimited text into records and fields.

The happy path never loops over rows in Python: record boundaries, line numbers and
field counts come from numpy on the raw bytes, and Arrow's CSV parser (pandas' C
parser as a fallback) reads the fields as strings. A headed CSV that uses quotes goes
through :mod:`csv` instead, since a quoted field may hold delimiters and newlines.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from fedgeo.data.errors import DataError

_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


@dataclass
class Records:
    """The records (lines) of a text, blank ones included.

    ``fields`` holds each record's parsed fields when the text went through
    :mod:`csv` (quoted CSV), else None and the fields are read with pandas.
    """

    lines: np.ndarray
    """int64 1-based physical line where each record starts."""
    nfields: np.ndarray
    """int64 number of fields of each record."""
    blank: np.ndarray
    """bool: the record is empty or only whitespace (such records are ignored)."""
    terminated: bool
    """Whether the last record ends with a newline."""
    starts: np.ndarray | None = None
    """int64 byte offset of each record (unquoted text only)."""
    seg_ends: np.ndarray | None = None
    """int64 byte offset just past each record's newline (unquoted text only)."""
    fields: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def text(self, data: bytes, i: int) -> str:
        """The text of record ``i`` without its line terminator (for messages)."""
        if self.fields is not None:
            return ",".join(self.fields[i])
        assert self.starts is not None and self.seg_ends is not None
        raw = data[self.starts[i] : self.seg_ends[i]]
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def split_unquoted(data: bytes, delimiter: str) -> Records:
    """Records of text without quoting: one per physical line (``\\n``; a ``\\r``
    before it is dropped), fields separated by ``delimiter``."""
    b = np.frombuffer(data, dtype=np.uint8)
    n = len(b)
    newlines = np.flatnonzero(b == 10)
    starts = np.concatenate(([0], newlines + 1)).astype(np.int64)
    seg_ends = np.concatenate((newlines + 1, [n])).astype(np.int64)
    terminated = bool(starts[-1] == n)
    if terminated:
        starts, seg_ends = starts[:-1], seg_ends[:-1]
    ends = seg_ends - (b[seg_ends - 1] == 10)
    ends = ends - ((ends > starts) & (b[np.maximum(ends - 1, 0)] == 13))
    delims = np.flatnonzero(b == ord(delimiter))
    owner = np.searchsorted(starts, delims, side="right") - 1
    nfields = np.bincount(owner, minlength=len(starts)).astype(np.int64) + 1
    length = ends - starts
    blank = length == 0
    # A whitespace-only record starts and ends with whitespace: check those few exactly.
    maybe = ~blank & _WHITESPACE[b[np.minimum(starts, n - 1)]] & _WHITESPACE[b[ends - 1]]
    for i in np.flatnonzero(maybe):
        blank[i] = not data[starts[i] : ends[i]].strip()
    return Records(
        lines=np.arange(1, len(starts) + 1, dtype=np.int64),
        nfields=nfields,
        blank=blank,
        terminated=terminated,
        starts=starts,
        seg_ends=seg_ends,
    )


def split_quoted_csv(data: bytes, name: str) -> Records:
    """Records of a comma-separated text with ``"``-quoting, parsed by :mod:`csv`."""
    text = data.decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    lines: list[int] = []
    rows: list[list[str]] = []
    previous_end = 0
    try:
        for row in reader:
            lines.append(previous_end + 1)
            rows.append(row)
            previous_end = reader.line_num
    except csv.Error as err:
        raise DataError(
            f"malformed CSV: {err} (an unclosed quote?)", path=name, line=previous_end + 1
        ) from None
    nfields = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    blank = np.fromiter(
        (len(r) == 0 or (len(r) == 1 and not r[0].strip()) for r in rows),
        dtype=bool,
        count=len(rows),
    )
    return Records(
        lines=np.asarray(lines, dtype=np.int64),
        nfields=nfields,
        blank=blank,
        terminated=text.endswith(("\n", "\r")),
        fields=rows,
    )


def read_fields(
    data: bytes,
    records: Records,
    keep: np.ndarray,
    delimiter: str,
    usecols: dict[int, str],
) -> pd.DataFrame:
    """The fields of the records where ``keep`` is True, as string columns.

    ``usecols`` maps field positions to column names. Every kept record must have
    more fields than the largest position.
    """
    rows = np.flatnonzero(keep)
    if records.fields is not None:
        return pd.DataFrame(
            {
                col: pd.Series([records.fields[r][j] for r in rows], dtype=str)
                for j, col in usecols.items()
            }
        )
    if len(rows) == 0:
        return pd.DataFrame({col: pd.Series([], dtype=str) for col in usecols.values()})
    assert records.starts is not None and records.seg_ends is not None
    if len(rows) == len(records):
        text = data
    else:
        b = np.frombuffer(data, dtype=np.uint8)
        mask = np.repeat(keep, records.seg_ends - records.starts)
        text = b[: len(mask)][mask].tobytes()
    positions = sorted(usecols)
    nfields = int(records.nfields[rows[0]])
    frame = _read_with_arrow(text, delimiter, nfields, positions)
    if frame is None or len(frame) != len(rows):
        frame = _read_with_pandas(text, delimiter, positions)
    if len(frame) != len(rows):  # pragma: no cover - the split above mirrors the parsers
        raise RuntimeError(f"parsed {len(frame)} rows where {len(rows)} records were found")
    return frame.rename(columns={j: usecols[j] for j in positions})[[usecols[j] for j in positions]]


def _read_with_arrow(
    text: bytes, delimiter: str, nfields: int, positions: list[int]
) -> pd.DataFrame | None:
    """All fields as strings with Arrow's multithreaded CSV parser (no quoting); None when
    the text has a lone ``\r`` (Arrow ends lines there, the split above does not) or Arrow
    cannot parse it."""
    if text.count(b"\r") != text.count(b"\r\n"):
        return None
    names = [str(j) for j in range(nfields)]
    try:
        table = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char=False,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=[names[j] for j in positions],
                column_types={names[j]: pa.string() for j in positions},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowException:
        return None
    return pd.DataFrame({j: table.column(names[j]).to_pandas() for j in positions})


def _read_with_pandas(text: bytes, delimiter: str, positions: list[int]) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(text),
        sep=delimiter,
        header=None,
        usecols=positions,
        dtype=str,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        skip_blank_lines=False,
        lineterminator="\n",
        encoding="utf-8",
        engine="c",
    )
