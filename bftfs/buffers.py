"""Buffers written whole before they are read: allocated without being zeroed first.

Pure (no I/O library), so the PASIS cores may use it (``erasure`` joins a decoded block
into one, ``erasure_kernel`` has ISA-L write code fragments into them;
``tests/t1_rw_layering.py``).
"""

from __future__ import annotations

import ctypes
from typing import Any


def _constructor(name: str) -> Any:
    """CPython's ``name(NULL, n)``: with no source bytes it allocates and does not fill."""
    try:
        fn = getattr(ctypes.pythonapi, name)
    except (AttributeError, OSError):  # pragma: no cover - another interpreter
        return None
    fn.restype = ctypes.py_object
    fn.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    return fn


_bytearray_of_size = _constructor("PyByteArray_FromStringAndSize")
_bytes_of_size = _constructor("PyBytes_FromStringAndSize")


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


def unwritten_bytes(n: int) -> bytes:
    """A new bytes object of ``n`` bytes for C code to fill before anyone else sees it
    (ISA-L writing code fragments, ``erasure_kernel``).

    This is what a C extension does to return bytes it computed (zfec does the same): the
    object has no other reference and no cached hash until it is returned, so writing it
    once through a pointer is safe, and the fragments stay ``bytes`` without a copy."""
    if _bytes_of_size is None or n <= 0:  # pragma: no cover - another interpreter
        return bytes(n)
    out = _bytes_of_size(None, n)
    assert type(out) is bytes and len(out) == n
    return out
