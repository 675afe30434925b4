"""Finding the canonical columns in a CSV header."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedgeo.data.errors import DataError
from fedgeo.data.table import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

CANONICAL = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

# Header names recognized without options, compared after lower-casing and dropping
# "_", "-", "." and spaces; earlier names win when a header has several.
NAMES: dict[str, tuple[str, ...]] = {
    "user_id": ("userid", "user"),
    "location_id": (
        "locationid",
        "venueid",
        "poiid",
        "placeid",
        "location",
        "venue",
        "poi",
    ),
    "latitude": ("latitude", "lat"),
    "longitude": ("longitude", "lon", "lng", "long"),
    "tz_offset_min": ("tzoffsetmin", "tzoffset", "timezoneoffset"),
    "category": ("category", "venuecategory"),
}
# Time column names and how their values are read: "auto" = date-time text
# (ISO 8601 or the TSMC2014 style) or epoch seconds when numeric.
TIME_NAMES: tuple[tuple[str, str], ...] = (
    ("timestamp", "auto"),
    ("utctimestamp", "auto"),
    ("utctime", "auto"),
    ("datetime", "auto"),
    ("time", "auto"),
    ("unix", "s"),
    ("epoch", "s"),
    ("timemin", "min"),
    ("minutes", "min"),
    ("times", "s"),
    ("timesec", "s"),
    ("seconds", "s"),
    ("timems", "ms"),
)
RELATIVE_TIME_NAMES = frozenset(("timemin", "minutes", "times", "timesec", "seconds", "timems"))
"""Columns of times since an origin the file does not state (not UTC epoch)."""


def normalize(name: str) -> str:
    """A header name as compared with :data:`NAMES`."""
    return re.sub(r"[\s_.\-]", "", name).lower()


@dataclass
class ColumnMap:
    """Where each canonical column is in a CSV file."""

    positions: dict[str, int]
    """canonical name -> field position in the header."""
    header: list[str]
    time_style: str
    """How the time column is read: ``s``, ``min``, ``ms``, ``iso`` or ``auto``."""
    relative_time: bool
    """Whether times are relative to an origin the file does not state."""

    def source(self, canonical: str) -> str:
        """The file's name for a canonical column."""
        return self.header[self.positions[canonical]]


def check_mapping(columns: dict[str, str] | None) -> dict[str, str]:
    """Validate a ``columns`` argument (canonical name -> file column); ``"time"`` is
    accepted for ``"timestamp"``. Raises :class:`ValueError` on unknown names."""
    out: dict[str, str] = {}
    for key, value in (columns or {}).items():
        canonical = "timestamp" if key == "time" else key
        if canonical not in CANONICAL:
            raise ValueError(f"unknown column {key!r} in columns; known: {', '.join(CANONICAL)}")
        if not isinstance(value, str) or not value:
            raise ValueError(f"columns[{key!r}] must be a column name, got {value!r}")
        out[canonical] = value
    return out


def separator_hint(line: str) -> str:
    """What a csv line without a comma but with a tab, ``;`` or ``|`` says about its file
    ("" when it has a comma or none of them)."""
    if "," in line or not any(c in line for c in "\t;|"):
        return ""
    sep = "tab" if "\t" in line else repr(next(c for c in ";|" if c in line))
    return (
        f"the file looks {sep}-separated, not comma-separated (raw TSMC2014 or SNAP files: "
        "format 'tsmc2014' or 'snap')"
    )


def find_columns(
    header: list[str],
    mapping: dict[str, str],
    time_unit: str | None,
    name: str,
    header_line: int,
) -> ColumnMap:
    """Locate the canonical columns in ``header`` (explicit ``mapping`` first, then
    the recognized names). Raises :class:`DataError` for a missing required column."""
    stripped = [h.strip() for h in header]
    normalized = [normalize(h) for h in stripped]
    positions: dict[str, int] = {}

    def missing(canonical: str, wanted: str | None) -> DataError:
        shown = ", ".join(repr(h) for h in stripped)
        what = f"column {wanted!r} not found" if wanted else "missing column"
        hint = f"; name it with columns={{{canonical!r}: 'NAME'}} (--columns {canonical}=NAME)"
        if len(stripped) == 1 and separator_hint(stripped[0]):
            hint = f"; the header is one column: {separator_hint(stripped[0])}"
        return DataError(
            f"{what} (header: {shown}){hint}",
            path=name,
            line=header_line,
            field=wanted or canonical,
        )

    for canonical, wanted in mapping.items():
        if wanted in stripped:
            positions[canonical] = stripped.index(wanted)
        elif normalize(wanted) in normalized:
            positions[canonical] = normalized.index(normalize(wanted))
        else:
            raise missing(canonical, wanted)
    for canonical, names in NAMES.items():
        if canonical in positions:
            continue
        for candidate in (normalize(canonical), *names):
            if candidate in normalized and normalized.index(candidate) not in positions.values():
                positions[canonical] = normalized.index(candidate)
                break
    time_style, relative = "auto", False
    if "timestamp" in positions:
        key = normalized[positions["timestamp"]]
        style = dict(TIME_NAMES).get(key, "auto")
        time_style, relative = style, key in RELATIVE_TIME_NAMES
    else:
        for candidate, style in TIME_NAMES:
            if candidate in normalized:
                positions["timestamp"] = normalized.index(candidate)
                time_style, relative = style, candidate in RELATIVE_TIME_NAMES
                break
    if time_unit is not None:
        time_style = time_unit
    for canonical in REQUIRED_COLUMNS:
        if canonical not in positions:
            raise missing(canonical, None)
    return ColumnMap(positions, stripped, time_style, relative)
