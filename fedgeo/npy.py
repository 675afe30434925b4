"""Read-only views of ``.npy`` payloads: the bytes a Flower ``Array`` carries.

Flower's ``Array.numpy()`` runs ``np.load`` on the payload, which parses the header and
allocates and copies the array; a message with a model carries a few megabytes of it,
and a simulation sends one per node. :func:`npy_view` returns a view of the bytes
instead (no copy) whenever the payload is a plain C-ordered ``.npy`` array, and None
otherwise (the caller then uses ``np.load``). Headers are parsed once per distinct
header (the arrays of a model repeat theirs in every message). The view is read-only;
copy it before writing.
"""

from __future__ import annotations

from functools import lru_cache
from io import BytesIO

import numpy as np

_MAGIC = b"\x93NUMPY"


@lru_cache(maxsize=1024)
def _header(prefix: bytes) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """``(shape, dtype, data offset)`` of a C-ordered plain array from the magic string,
    version, length and header (``prefix``), or None."""
    stream = BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            return None
    except ValueError:
        return None
    if fortran_order or dtype.hasobject:
        return None
    return tuple(shape), dtype, stream.tell()


def _prefix(data: bytes) -> bytes | None:
    """The bytes up to the end of the header, or None for a payload that is not .npy."""
    if len(data) < 10 or not data.startswith(_MAGIC):
        return None
    major = data[6]
    if major == 1:
        end = 10 + int.from_bytes(data[8:10], "little")
    elif major in (2, 3) and len(data) >= 12:
        end = 12 + int.from_bytes(data[8:12], "little")
    else:
        return None
    return data[:end] if end <= len(data) else None


def npy_view(data: bytes) -> np.ndarray | None:
    """A read-only view of the array in the ``.npy`` bytes ``data``, or None when the
    payload is not a C-ordered array of a plain dtype (Fortran order, objects, another
    version or a truncated payload)."""
    prefix = _prefix(data)
    parsed = _header(prefix) if prefix is not None else None
    if parsed is None:
        return None
    shape, dtype, offset = parsed
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        return None
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
