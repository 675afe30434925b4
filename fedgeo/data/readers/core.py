"""``read_checkins``: a check-in file -> the canonical check-in table."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedgeo.data.errors import DataError
from fedgeo.data.readers import fields as F
from fedgeo.data.readers.columns import check_mapping, find_columns, separator_hint
from fedgeo.data.readers.records import Records, read_fields, split_quoted_csv, split_unquoted
from fedgeo.data.readers.source import decompress, display_name, read_bytes, to_utf8

FORMATS = ("tsmc2014", "snap", "csv")
"""Input formats: raw Foursquare TSMC2014, raw SNAP (Gowalla, Brightkite), headed CSV."""
DEFAULT_ENCODING = {"tsmc2014": "latin-1", "snap": "utf-8", "csv": "utf-8"}
MAX_EXAMPLES = 5
"""How many skipped-row messages a :class:`ReadResult` keeps."""

_DELIMITER = {"tsmc2014": "\t", "snap": "\t", "csv": ","}
# Field names (as shown in messages) of the headerless formats, in file order, and the
# canonical column each one feeds (None: not kept).
_LAYOUT: dict[str, tuple[tuple[str, str | None], ...]] = {
    "tsmc2014": (
        ("userId", "user_id"),
        ("venueId", "location_id"),
        ("venueCategoryId", None),
        ("venueCategory", "category"),
        ("latitude", "latitude"),
        ("longitude", "longitude"),
        ("timezoneOffset", "tz_offset_min"),
        ("utcTimestamp", "timestamp"),
    ),
    "snap": (
        ("user", "user_id"),
        ("check-in time", "timestamp"),
        ("latitude", "latitude"),
        ("longitude", "longitude"),
        ("location id", "location_id"),
    ),
}
_CANONICAL_ORDER = (
    "user_id",
    "location_id",
    "latitude",
    "longitude",
    "timestamp",
    "tz_offset_min",
    "category",
)


@dataclass
class ReadResult:
    """What :func:`read_checkins` read."""

    table: pd.DataFrame
    """The canonical check-in table (see :mod:`fedgeo.data.table`), in input order."""
    path: str
    """The source as named in messages (``<stdin>`` for ``"-"``)."""
    format: str
    skipped: int = 0
    """Bad rows dropped (only with ``skip_bad=True``)."""
    skipped_examples: list[str] = field(default_factory=list)
    """Messages for the first few dropped rows, in file order."""
    columns: dict[str, str] = field(default_factory=dict)
    """Canonical column -> the file's column (field) it was read from."""
    relative_time: bool = False
    """True when times count from an origin the file does not state (e.g. ``time_min``):
    ``timestamp`` differences and order are exact, absolute dates are not."""


@dataclass
class _Column:
    canonical: str
    position: int
    source: str


class _Problems:
    """Bad records found so far: groups of lines with a lazy explanation per entry."""

    def __init__(self, name: str, records: Records) -> None:
        self.name = name
        self.records = records
        self.last_line = int(records.lines[-1]) if len(records) else 0
        self.groups: list[tuple[np.ndarray, Callable[[int], tuple[str | None, str]]]] = []

    def add(self, lines: np.ndarray, explain: Callable[[int], tuple[str | None, str]]) -> None:
        if len(lines):
            self.groups.append((np.asarray(lines, dtype=np.int64), explain))

    @property
    def count(self) -> int:
        return int(sum(len(lines) for lines, _ in self.groups))

    def first(self, k: int) -> list[DataError]:
        """The first ``k`` problems in file order, as errors."""
        if not self.groups:
            return []
        lines = np.concatenate([g[0] for g in self.groups])
        group = np.concatenate([np.full(len(g[0]), i) for i, g in enumerate(self.groups)])
        index = np.concatenate([np.arange(len(g[0])) for g in self.groups])
        errors = []
        for j in np.argsort(lines, kind="stable")[:k]:
            line = int(lines[j])
            fld, message = self.groups[group[j]][1](int(index[j]))
            if line == self.last_line and not self.records.terminated:
                message += " (the last line has no newline at the end: truncated file?)"
            errors.append(DataError(message, path=self.name, line=line, field=fld))
        return errors


def read_checkins(
    path: str | Path,
    format: str,
    *,
    columns: dict[str, str] | None = None,
    skip_bad: bool = False,
    time_unit: str | None = None,
    encoding: str | None = None,
) -> ReadResult:
    """Read a check-in file into the canonical check-in table.

    Parameters
    ----------
    path
        The file (gzip, bzip2 or xz compressed files are recognized), or ``"-"`` for
        standard input.
    format
        One of :data:`FORMATS`: ``"tsmc2014"`` (raw Foursquare TSMC2014 file),
        ``"snap"`` (raw SNAP Gowalla/Brightkite file) or ``"csv"`` (headed CSV whose
        columns are recognized by name).
    columns
        csv only: canonical column -> the file's column name, for names that are not
        recognized, e.g. ``{"user_id": "uid", "timestamp": "t"}``.
    skip_bad
        Drop bad rows and count them in :attr:`ReadResult.skipped` instead of raising.
        A file with no valid row, a missing column or an encoding problem still raises.
    time_unit
        csv only: how to read the time column: ``"s"``, ``"min"``, ``"ms"`` (numbers)
        or ``"iso"`` (date-time text); by default it follows the column's name.
    encoding
        Text encoding; default latin-1 for tsmc2014, UTF-8 otherwise.

    Raises
    ------
    DataError
        Bad input, naming the file, line (1-based, counting a header) and field.
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        An unknown ``format``, ``time_unit``, ``encoding`` or ``columns`` key.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if time_unit is not None and time_unit not in F.TIME_UNITS:
        raise ValueError(f"unknown time_unit {time_unit!r}; choose one of {F.TIME_UNITS}")
    if format != "csv" and (columns or time_unit is not None):
        raise ValueError(f"columns and time_unit apply to the csv format only, not {format!r}")
    mapping = check_mapping(columns)
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}") from None

    name = display_name(path)
    data = decompress(read_bytes(path), name)
    if not data or data.isspace():
        raise DataError("empty file: no check-ins", path=name, line=1)
    delimiter = _DELIMITER[format]

    def field_of(raw: bytes, pos: int) -> str | None:
        """The field holding byte ``pos`` (for encoding errors, before decoding)."""
        start = raw.rfind(b"\n", 0, pos) + 1
        if format == "csv":
            if raw[:start].isspace() or start == 0:
                return None  # the header line
            names = _first_line_fields(raw, delimiter)
        else:
            names = [n for n, _ in _LAYOUT[format]]
        k = raw.count(delimiter.encode(), start, pos)
        return names[k] if k < len(names) else None

    try:
        data = to_utf8(
            data,
            name,
            encoding or DEFAULT_ENCODING[format],
            explicit=encoding is not None,
            field_of=field_of,
        )
    except DataError:
        # a file in another layout read as csv (a raw latin-1 TSMC2014 file) fails to
        # decode before its header is read: name the layout, not the encoding
        start = len(data) - len(data.lstrip())
        hint = separator_hint(data[start:].split(b"\n", 1)[0].decode("latin-1"))
        if format != "csv" or not hint:
            raise
        raise DataError(
            f"the first line has no comma: {hint}",
            path=name,
            line=data.count(b"\n", 0, start) + 1,
        ) from None
    if format == "csv" and b'"' in data:
        records = split_quoted_csv(data, name)
    else:
        records = split_unquoted(data, delimiter)
    content = ~records.blank

    relative = False
    time_style = {"tsmc2014": "tsmc", "snap": "iso"}.get(format, "auto")
    if format == "csv":
        header_index = int(np.flatnonzero(content)[0])
        content[header_index] = False
        header = _record_fields(data, records, header_index, delimiter)
        cmap = find_columns(
            header, mapping, time_unit, name, header_line=int(records.lines[header_index])
        )
        cols = [_Column(c, p, cmap.source(c)) for c, p in cmap.positions.items()]
        time_style, relative = cmap.time_style, cmap.relative_time
        names = cmap.header
        if not content.any():
            raise DataError(
                "no data rows after the header", path=name, line=int(records.lines[-1]) + 1
            )
    else:
        cols = [_Column(c, p, n) for p, (n, c) in enumerate(_LAYOUT[format]) if c is not None]
        names = [n for n, _ in _LAYOUT[format]]
    cols.sort(key=lambda c: c.position)
    expected = len(names)

    problems = _Problems(name, records)
    wrong = content & (records.nfields != expected)
    _add_structure_problems(problems, data, records, np.flatnonzero(wrong), names, format)
    good = content & ~wrong
    frame = read_fields(data, records, good, delimiter, {c.position: c.canonical for c in cols})
    row_lines = records.lines[good]

    parsed: dict[str, F.Parsed] = {}
    for col in cols:
        parsed[col.canonical] = _parse_column(col.canonical, frame[col.canonical], time_style)
    checks = [(col.source, parsed[col.canonical]) for col in cols]
    if format == "snap":
        checks.append(("latitude", _snap_null_island(parsed["latitude"], parsed["longitude"])))
    bad = np.zeros(len(frame), dtype=bool)
    for _, p in checks:
        bad |= p.bad
    bad_rows = np.flatnonzero(bad)

    def explain_row(j: int) -> tuple[str | None, str]:
        row = int(bad_rows[j])
        for source, p in checks:
            if p.bad[row]:
                return source, p.explain(row)
        raise AssertionError("row has no problem")  # pragma: no cover

    problems.add(row_lines[bad_rows], explain_row)

    total_rows = int(content.sum())
    examples = problems.first(MAX_EXAMPLES)
    if examples and not skip_bad:
        first = examples[0]
        n = problems.count
        first.message += (
            f" [{n} bad row{'s' if n != 1 else ''} of {total_rows}; "
            "skip_bad=True / --skip-bad-rows drops them]"
        )
        raise DataError(first.message, path=first.path, line=first.line, field=first.field)
    keep = ~bad
    if not keep.any():
        where = f" (first: {examples[0]})" if examples else ""
        raise DataError(f"no valid check-ins: all {total_rows} data rows are bad{where}", path=name)

    table = _assemble(parsed, keep)
    return ReadResult(
        table=table,
        path=name,
        format=format,
        skipped=problems.count,
        skipped_examples=[str(e) for e in examples],
        columns={c.canonical: c.source for c in cols},
        relative_time=relative,
    )


def _first_line_fields(data: bytes, delimiter: str) -> list[str]:
    """Rough header names: the first non-blank line split at ``delimiter``."""
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        line = data[pos:end]
        if line.strip():
            text = line.decode("latin-1").rstrip("\r")
            return [h.strip().strip('"') for h in text.split(delimiter)]
        pos = end + 1
    return []


def _record_fields(data: bytes, records: Records, i: int, delimiter: str) -> list[str]:
    if records.fields is not None:
        return list(records.fields[i])
    return records.text(data, i).split(delimiter)


def _add_structure_problems(
    problems: _Problems,
    data: bytes,
    records: Records,
    wrong: np.ndarray,
    names: list[str],
    format: str,
) -> None:
    expected = len(names)
    kind = "tab-separated" if format != "csv" else "comma-separated"

    def explain(j: int) -> tuple[str | None, str]:
        i = int(wrong[j])
        found = int(records.nfields[i])
        message = f"expected {expected} {kind} fields, found {found}"
        text = records.text(data, i)
        if found == 1:
            for char, label in ((",", "commas"), ("\t", "tabs"), (";", "semicolons")):
                if char in text and char != _DELIMITER[format]:
                    message += f" (the line has {label}: wrong delimiter or wrong format?)"
                    break
        if records.fields is not None and any("\n" in f for f in records.fields[i]):
            message += " (a quoted field spans lines: an unclosed quote?)"
        if found < expected:
            return names[found].strip(), f"missing: {message}"
        return names[-1].strip(), f"extra fields after this one: {message}"

    problems.add(records.lines[wrong], explain)


def _parse_column(canonical: str, column: pd.Series, time_style: str) -> F.Parsed:
    if canonical in ("user_id", "location_id"):
        return F.parse_id(column)
    if canonical == "latitude":
        return F.parse_float(column, -90.0, 90.0, "latitude")
    if canonical == "longitude":
        return F.parse_float(column, -180.0, 180.0, "longitude")
    if canonical == "timestamp":
        return F.parse_time(column, time_style)
    if canonical == "tz_offset_min":
        return F.parse_int(column, -1440, 1440, "timezone offset (minutes)")
    if canonical == "category":
        return F.Parsed(column, np.zeros(len(column), dtype=bool), lambda i: "")
    raise AssertionError(canonical)  # pragma: no cover


def _snap_null_island(lat: F.Parsed, lon: F.Parsed) -> F.Parsed:
    """SNAP files write (0, 0) for a check-in without a known location."""
    zero = (lat.values == 0.0) & (lon.values == 0.0)
    return F.Parsed(zero, zero, lambda i: "coordinates (0, 0): SNAP's mark for an unknown location")


def _assemble(parsed: dict[str, F.Parsed], keep: np.ndarray) -> pd.DataFrame:
    out: dict[str, pd.Series] = {}
    for canonical in _CANONICAL_ORDER:
        if canonical not in parsed:
            continue
        values = parsed[canonical].values
        values = values[keep] if isinstance(values, np.ndarray) else values[keep]
        if canonical in ("user_id", "location_id"):
            out[canonical] = F.id_values(values)
        elif canonical == "category":
            out[canonical] = values.reset_index(drop=True).astype(object)
        else:
            dtype = {"timestamp": np.int64, "tz_offset_min": np.int32}.get(canonical, np.float64)
            out[canonical] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(out)
