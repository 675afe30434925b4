"""A file of named arrays exactly as a message carries them (dtype, shape, serialization
type and payload bytes), for simulations that share one copy of a large record between
every node message instead of sending it in each (see docs/federation.md, "Speed").

Format: the 8 bytes ``FEDGEOA1``, an 8-byte little-endian header length, a JSON header
(a list of ``{"key", "dtype", "shape", "stype", "size"}``) and the payloads one after the
other. Reading parses JSON and slices bytes only: a file that is not one is refused with
a ``ValueError``, never executed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedgeo.atomic import atomic_open

MAGIC = b"FEDGEOA1"


@dataclass(frozen=True)
class StoredArray:
    """One array as a message carries it."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    stype: str
    data: bytes


def write_arrays(path: str | Path, arrays: Sequence[StoredArray]) -> None:
    """Write ``arrays`` to ``path`` (atomically: a reader never sees part of it)."""
    header = json.dumps(
        [
            {"key": a.key, "dtype": a.dtype, "shape": list(a.shape), "stype": a.stype,
             "size": len(a.data)}
            for a in arrays
        ]  # fmt: skip
    ).encode()
    with atomic_open(path) as fh:
        fh.write(MAGIC + len(header).to_bytes(8, "little") + header)
        for array in arrays:
            fh.write(array.data)


def read_arrays(path: str | Path) -> list[StoredArray]:
    """The arrays :func:`write_arrays` wrote to ``path``, in order."""
    data = Path(path).read_bytes()
    if len(data) < 16 or not data.startswith(MAGIC):
        raise ValueError(f"{path}: not a FedGeo array file")
    length = int.from_bytes(data[8:16], "little")
    try:
        header = json.loads(data[16 : 16 + length])
        offset, out = 16 + length, []
        for entry in header:
            size = int(entry["size"])
            payload = data[offset : offset + size]
            if len(payload) != size:
                raise ValueError("truncated")
            out.append(
                StoredArray(
                    str(entry["key"]),
                    str(entry["dtype"]),
                    tuple(int(n) for n in entry["shape"]),
                    str(entry["stype"]),
                    payload,
                )
            )
            offset += size
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: damaged FedGeo array file ({err})") from None
    if offset != len(data):
        raise ValueError(f"{path}: damaged FedGeo array file (trailing bytes)")
    return out
