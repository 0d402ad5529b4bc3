"""Buffers written whole before they are read: allocated without being zeroed first.

Pure (no I/O library), so the PASIS cores may use it (``erasure`` joins a decoded block
into one; ``tests/t1_rw_layering.py``).
"""

from __future__ import annotations

import ctypes
from typing import Any

_bytearray_of_size: Any = None
try:  # CPython's constructor: with no source bytes it allocates and does not fill
    _bytearray_of_size = ctypes.pythonapi.PyByteArray_FromStringAndSize
    _bytearray_of_size.restype = ctypes.py_object
    _bytearray_of_size.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
except (AttributeError, OSError):  # pragma: no cover - another interpreter
    _bytearray_of_size = None


def unfilled(n: int) -> bytearray:
    """A bytearray of ``n`` bytes not zeroed first: only for a buffer that is written whole
    before anything reads it (a sealed or opened block, a sealed frame, a frame read
    from a socket into it, a block joined from its fragments).

    ``bytearray(n)`` writes ``n`` zeros that the next step overwrites: for a 1 MiB block
    0.08 ms of the 0.27 an opened block cost here (the pages are new: the block goes to
    the mount's cache, another is freed), about 2% of a cold read's daemon CPU
    (issue 34).  ``PyByteArray_FromStringAndSize(NULL, n)`` allocates without filling."""
    if _bytearray_of_size is None or n <= 0:  # pragma: no cover - another interpreter
        return bytearray(n)
    out = _bytearray_of_size(None, n)
    assert type(out) is bytearray and len(out) == n
    return out
