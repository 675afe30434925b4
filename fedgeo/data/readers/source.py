"""A check-in file's bytes: path or stdin, decompression and encoding checks.

Everything after this module works on UTF-8 bytes, so the structure of a file
(newlines, delimiters, quotes: all ASCII) can be found with numpy on the raw bytes.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from fedgeo.data.errors import DataError

STDIN = "-"
"""The path that means: read standard input."""

FieldNamer = Callable[[bytes, int], "str | None"]
"""``(data, byte position) -> name of the field holding that byte`` (None if unknown)."""


def display_name(path: str | Path) -> str:
    """How a source is named in messages: the path as given, or ``<stdin>``."""
    return "<stdin>" if str(path) == STDIN else str(path)


def read_bytes(path: str | Path) -> bytes:
    """All bytes of ``path`` (``"-"``: standard input).

    A missing file raises :class:`FileNotFoundError`; other I/O problems
    (a directory, no permission) raise :class:`DataError`.
    """
    if str(path) == STDIN:
        stream = getattr(sys.stdin, "buffer", None)
        if stream is not None:
            return stream.read()
        return sys.stdin.read().encode("utf-8")
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise DataError(f"cannot read the file: {err.strerror or err}", path=str(path)) from None


def decompress(data: bytes, name: str) -> bytes:
    """Undo gzip, bzip2 or xz compression, recognized by the magic bytes (not the name)."""
    if data[:2] == b"\x1f\x8b":
        kind, opener = "gzip", gzip.decompress
    elif data[:3] == b"BZh" and data[4:10] == b"1AY&SY":
        kind, opener = "bzip2", bz2.decompress
    elif data[:6] == b"\xfd7zXZ\x00":
        kind, opener = "xz", lzma.decompress
    elif data[:4] == b"PK\x03\x04":
        raise DataError("the file is a zip archive: unzip it first", path=name, line=1)
    else:
        return data
    try:
        return opener(data)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
        raise DataError(f"corrupt or truncated {kind} data ({err})", path=name) from None


def line_of(data: bytes, pos: int) -> int:
    """1-based line number of byte ``pos``."""
    return data.count(b"\n", 0, pos) + 1


def _utf16_without_bom(data: bytes) -> str | None:
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even_zero = sample[0::2].count(0) / len(sample[0::2])
    odd_zero = sample[1::2].count(0) / len(sample[1::2])
    if odd_zero > 0.3 and even_zero < 0.05:
        return "utf-16-le"
    if even_zero > 0.3 and odd_zero < 0.05:
        return "utf-16-be"
    return None


_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF32_BE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF16_LE, "UTF-16", "utf-16"),
    (codecs.BOM_UTF16_BE, "UTF-16", "utf-16"),
)


def to_utf8(
    data: bytes,
    name: str,
    encoding: str,
    *,
    explicit: bool,
    field_of: FieldNamer,
) -> bytes:
    """Decode ``data`` from ``encoding`` and return it as UTF-8 (a UTF-8 BOM dropped).

    Unless the encoding was given explicitly, a UTF-16/32 byte-order mark or NUL
    bytes (binary data, UTF-16 without a mark) are reported as the wrong encoding.
    Undecodable bytes raise :class:`DataError` naming the line and field and
    suggesting the ``encoding`` option.
    """
    codec = codecs.lookup(encoding).name
    option = "pass encoding='{enc}' (fedgeo: --encoding {enc}) or convert the file to UTF-8"
    if not explicit:
        for bom, label, enc in _BOMS:
            if data.startswith(bom):
                raise DataError(
                    f"wrong encoding: the file is {label} (it starts with a {label} byte-order "
                    f"mark) but this reader expects {codec}; " + option.format(enc=enc),
                    path=name,
                    line=1,
                )
        nul = data.find(b"\x00")
        if nul >= 0:
            guess = _utf16_without_bom(data)
            if guess is not None:
                raise DataError(
                    f"wrong encoding: the file looks {guess.upper()} (NUL bytes between "
                    f"characters) but this reader expects {codec}; " + option.format(enc=guess),
                    path=name,
                    line=1,
                )
            raise DataError(
                f"binary data (a NUL byte at byte {nul}): not a text check-in file",
                path=name,
                line=line_of(data, nul),
            )
    try:
        if codec == "utf-8":
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            if not data.isascii():
                data.decode("utf-8")
            return data
        if codec in ("latin-1", "iso8859-1", "ascii") and data.isascii():
            return data
        text = data.decode(codec)
    except UnicodeDecodeError as err:
        bad = data[err.start : err.start + 1]
        other = "latin-1" if codec == "utf-8" else "utf-8"
        raise DataError(
            f"wrong encoding: byte 0x{bad.hex()} is not valid {codec} ({err.reason}); if the "
            "file uses another encoding, " + option.format(enc=other),
            path=name,
            line=line_of(data, err.start),
            field=field_of(data, err.start),
        ) from None
    return text.removeprefix("\ufeff").encode("utf-8")
