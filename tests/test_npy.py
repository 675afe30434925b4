"""Read-only views of .npy payloads (what messages carry) equal np.load, or decline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array

from fedgeo.npy import npy_view


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12.0).reshape(3, 4),
        np.zeros((0, 5), np.float32),
        np.array(3.5),
        np.arange(6, dtype=np.int64),
        np.random.default_rng(0).normal(size=(7, 3, 2)).astype(np.float16),
    ],
)
def test_view_equals_np_load_and_is_read_only(array: np.ndarray) -> None:
    data = _npy(array)
    view = npy_view(data)
    loaded = np.load(io.BytesIO(data))
    assert view is not None and view.dtype == loaded.dtype and view.shape == loaded.shape
    assert view.tobytes() == loaded.tobytes()
    assert not view.flags.writeable
    assert npy_view(Array(array).data).tobytes() == array.tobytes()  # Flower's payload


def test_what_it_cannot_view_is_left_to_np_load() -> None:
    assert npy_view(_npy(np.asfortranarray(np.ones((3, 2))))) is None
    assert npy_view(_npy(np.array([{"a": 1}], dtype=object))) is None
    data = _npy(np.arange(10.0))
    assert npy_view(data[:-8]) is None  # truncated
    assert npy_view(data + b"\0") is None  # trailing bytes
    assert npy_view(b"not an array") is None
    assert npy_view(b"\x93NUMPY\x01\x00\xff\xff") is None  # header past the end
