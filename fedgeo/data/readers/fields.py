"""Vectorized conversion of string fields to check-in values.

Each parser takes a column of strings and returns a :class:`Parsed`: the converted
values (filler where bad), a mask of bad rows and a function that explains, for one
bad row, what is wrong with it. Messages are only built for the rows reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

TSMC_TIME_FORMAT = "%a %b %d %H:%M:%S %z %Y"
"""``Sat Jun 16 21:29:30 +0000 2012``: the TSMC2014 ``utcTimestamp`` layout."""
TSMC_TIME_PATTERN = r"[A-Za-z]{3} [A-Za-z]{3} +\d{1,2} \d{2}:\d{2}:\d{2} [+-]\d{4} \d{4}"
TIME_UNITS = ("s", "min", "ms", "iso")
"""Values of ``time_unit``: numbers of seconds, minutes or milliseconds, or date-time text."""
SECONDS_PER_UNIT = {"s": 1.0, "min": 60.0, "ms": 0.001}
UNIT_NAMES = {"s": "seconds", "min": "minutes", "ms": "milliseconds"}
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_INT_ID = r"-?(?:0|[1-9][0-9]{0,17})"


@dataclass
class Parsed:
    """Converted values of one column and where they are bad."""

    values: np.ndarray | pd.Series
    """numpy values, or a string Series for ids and categories."""
    bad: np.ndarray
    explain: Callable[[int], str]


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_id(column: pd.Series) -> Parsed:
    """Ids: any non-empty text (surrounding whitespace dropped)."""
    stripped = column.str.strip()
    bad = (stripped == "").to_numpy(dtype=bool)
    return Parsed(stripped, bad, lambda i: "empty id")


def id_values(ids: pd.Series) -> pd.Series:
    """Ids as int64 when every one is a plain integer (no sign but ``-``, no leading
    zeros, at most 18 digits), else as Python strings (object)."""
    ids = ids.reset_index(drop=True)
    if len(ids) and bool(ids.str.fullmatch(_INT_ID).all()):
        try:
            ints = pc.cast(pa.array(ids, type=pa.string()), pa.int64())
            return pd.Series(ints.to_numpy(zero_copy_only=False), dtype=np.int64)
        except (pa.ArrowException, TypeError):
            return ids.astype(np.int64)
    return ids.astype(object)


def to_float(column: pd.Series) -> np.ndarray:
    """float64 values of a string column; NaN where a value is not a number."""
    try:  # fast path: Arrow parses every value
        strings = pc.utf8_trim_whitespace(pa.array(column, type=pa.string()))
        return pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowException, TypeError):
        return pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def parse_float(column: pd.Series, lo: float, hi: float, what: str = "value") -> Parsed:
    """Finite numbers in ``[lo, hi]``."""
    values = to_float(column)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)

    def explain(i: int) -> str:
        text, value = str(column.iat[i]).strip(), values[i]
        if text == "":
            return f"empty {what}"
        if np.isnan(value):
            if text.lower() in ("nan", "+nan", "-nan"):
                return f"{what} is NaN"
            return f"not a number: {_quoted(text)}"
        if not np.isfinite(value):
            return f"{what} is infinite: {_quoted(text)}"
        return f"{what} {text} outside [{lo:g}, {hi:g}]"

    return Parsed(values, bad, explain)


def parse_int(column: pd.Series, lo: int, hi: int, what: str) -> Parsed:
    """Whole numbers in ``[lo, hi]`` (as int64)."""
    parsed = parse_float(column, lo, hi, what)
    values = parsed.values
    with np.errstate(invalid="ignore"):
        fractional = np.isfinite(values) & (values != np.round(values))
    bad = parsed.bad | fractional

    def explain(i: int) -> str:
        if fractional[i]:
            return f"{what} {str(column.iat[i]).strip()} is not a whole number"
        return parsed.explain(i)

    out = np.where(bad, 0, values).astype(np.int64)
    return Parsed(out, bad, explain)


def parse_datetime(column: pd.Series, style: str) -> Parsed:
    """Date-time text -> int64 UTC seconds. ``style`` is ``"iso"`` (ISO 8601; no
    offset means UTC) or ``"tsmc"`` (``Sat Jun 16 21:29:30 +0000 2012``)."""
    stripped = column.str.strip()
    fmt = TSMC_TIME_FORMAT if style == "tsmc" else "ISO8601"
    parsed = pd.to_datetime(stripped, format=fmt, utc=True, errors="coerce")
    bad = parsed.isna().to_numpy(dtype=bool)
    naive = parsed.dt.tz_convert(None).to_numpy().astype("datetime64[s]")
    values = np.where(bad, 0, naive.astype(np.int64))
    example = "Sat Jun 16 21:29:30 +0000 2012" if style == "tsmc" else "2012-06-16T21:29:30Z"

    def explain(i: int) -> str:
        text = str(stripped.iat[i])
        if text == "":
            return "empty time"
        return f"cannot parse time {_quoted(text)} (expected a time like {example!r})"

    return Parsed(values, bad, explain)


def parse_number_time(column: pd.Series, unit: str) -> Parsed:
    """Numeric times in ``unit`` (``s``, ``min``, ``ms``) -> int64 seconds (rounded)."""
    factor = SECONDS_PER_UNIT[unit]
    raw = to_float(column)
    with np.errstate(invalid="ignore", over="ignore"):
        seconds = np.rint(raw * factor)
        bad = ~np.isfinite(seconds) | (np.abs(seconds) > MAX_SECONDS)

    def explain(i: int) -> str:
        text = str(column.iat[i]).strip()
        if text == "":
            return "empty time"
        if np.isnan(raw[i]):
            message = f"not a number of {UNIT_NAMES[unit]}: {_quoted(text)}"
            if guess_time_style(pd.Series([text], dtype=str)) == "tsmc" or pd.notna(
                pd.to_datetime(text, format="ISO8601", errors="coerce")
            ):
                message += " (for date-time text pass time_unit='iso' / --time-unit iso)"
            return message
        message = f"time {text} {UNIT_NAMES[unit]} is out of range (beyond the year 9999)"
        if unit == "s" and np.isfinite(raw[i]) and abs(raw[i]) / 1000 <= MAX_SECONDS:
            message += "; if it holds milliseconds pass time_unit='ms' (--time-unit ms)"
        return message

    return Parsed(np.where(bad, 0, seconds).astype(np.int64), bad, explain)


def guess_time_style(column: pd.Series) -> str:
    """``"s"``, ``"tsmc"`` or ``"iso"`` from the first non-empty value of a time column."""
    stripped = column.str.strip()
    filled = stripped[stripped != ""]
    if len(filled) == 0:
        return "iso"
    first = str(filled.iat[0])
    if pd.notna(pd.to_numeric(pd.Series([first]), errors="coerce").iat[0]):
        return "s"
    if pd.Series([first]).str.fullmatch(TSMC_TIME_PATTERN).iat[0]:
        return "tsmc"
    return "iso"


def parse_time(column: pd.Series, style: str) -> Parsed:
    """Times in ``style``: a unit of :data:`SECONDS_PER_UNIT`, ``"iso"``, ``"tsmc"`` or
    ``"auto"`` (guessed from the first value)."""
    if style == "auto":
        style = guess_time_style(column)
    if style in SECONDS_PER_UNIT:
        return parse_number_time(column, style)
    if style == "iso":
        # "iso" also accepts the TSMC2014 style when the column is written that way.
        style = "tsmc" if guess_time_style(column) == "tsmc" else "iso"
    return parse_datetime(column, style)
