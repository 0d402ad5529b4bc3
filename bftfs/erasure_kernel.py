"""The GF(2^8) arithmetic under the erasure code: ISA-L's SIMD kernels, or zfec's tables.

A systematic ``m``-of-``N`` code is one matrix over GF(2^8): fragment ``i`` is row ``i`` of
the ``N x m`` generator times the ``m`` stripes, byte position by byte position.  zfec
computes it a byte at a time through log tables: 4.2 ms for the three code fragments of a
1 MiB block on the machine of docs/performance.md.  Intel's ISA-L (Debian's ``libisal2``,
installed by ``scripts/setup.sh``) computes the same products with vector shuffles: 0.13 ms
(issue 34, eighth pass).  Both use GF(2^8) modulo x^8 + x^4 + x^3 + x^2 + 1, so ISA-L is
given zfec's own generator (read off zfec by encoding unit vectors) and writes the very
fragments zfec writes: nothing on the wire, on disk or in a cross checksum changes, and a
block written by either kernel is read by the other (``t1_erasure_kernel`` compares them
byte for byte, every decoding subset included).

ISA-L is loaded through cffi's ABI mode (``dlopen``; no compiler, no Python headers), and
cffi releases the GIL around each call, as zfec does.  Where the library is missing the
zfec kernel is used; ``BFTFS_ERASURE_KERNEL=zfec`` (or ``isal``) picks one, for measuring
the two against each other.

zfec's parameter names clash with ours: ``zfec.Encoder(k, m)`` takes *k = our m* (fragments
needed) and *its m = our N* (fragments produced).  This is the only module importing zfec
(``t1_rw_layering``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

import zfec

from bftfs.buffers import unwritten_bytes

#: The environment variable that picks a kernel: ``isal`` or ``zfec``.
KERNEL_ENV = "BFTFS_ERASURE_KERNEL"
#: The shared library ISA-L's Debian package installs.
ISAL_LIBRARY = "libisal.so.2"

Buffer = bytes | bytearray | memoryview


class Kernel(Protocol):
    """What :mod:`bftfs.erasure` asks of the arithmetic."""

    #: ``isa-l`` or ``zfec``: which arithmetic this process runs.
    name: str

    def code(self, stripes: Sequence[Buffer], m: int, n: int) -> list[bytes]:
        """The ``N - m`` code fragments of ``m`` equal-sized stripes, in node order."""
        ...

    def stripes(
        self, fragments: Sequence[Buffer], indices: Sequence[int], m: int, n: int
    ) -> list[bytes]:
        """The ``m`` stripes from ``m`` equal-sized fragments at sorted node ``indices``."""
        ...


class ZfecKernel:
    """zfec's table-driven code: everywhere zfec installs."""

    name = "zfec"

    def code(self, stripes: Sequence[Buffer], m: int, n: int) -> list[bytes]:
        """See :class:`Kernel`."""
        return [bytes(c) for c in _zfec_encoder(m, n).encode(list(stripes), tuple(range(m, n)))]

    def stripes(
        self, fragments: Sequence[Buffer], indices: Sequence[int], m: int, n: int
    ) -> list[bytes]:
        """See :class:`Kernel`."""
        decoded = _zfec_decoder(m, n).decode(list(fragments), tuple(indices))
        return [bytes(s) for s in decoded]


@lru_cache(maxsize=64)
def _zfec_encoder(m: int, n: int) -> zfec.Encoder:
    return zfec.Encoder(m, n)


@lru_cache(maxsize=64)
def _zfec_decoder(m: int, n: int) -> zfec.Decoder:
    return zfec.Decoder(m, n)


@lru_cache(maxsize=64)
def generator(m: int, n: int) -> tuple[tuple[int, ...], ...]:
    """zfec's ``N x m`` generator matrix: row ``i`` gives fragment ``i`` from the stripes.

    Read off zfec itself: the code fragments of the ``j``-th unit vector (one byte each)
    are column ``j``.  The first ``m`` rows are the identity (the code is systematic)."""
    identity = [tuple(int(i == j) for j in range(m)) for i in range(m)]
    if m == n:
        return tuple(identity)
    encoder = _zfec_encoder(m, n)
    units = [[bytes([int(i == j)]) for i in range(m)] for j in range(m)]
    columns = [[c[0] for c in encoder.encode(unit, tuple(range(m, n)))] for unit in units]
    parity = [tuple(columns[j][r] for j in range(m)) for r in range(n - m)]
    return tuple(identity + parity)


_CDEF = """
void ec_init_tables(int k, int rows, unsigned char *a, unsigned char *gftbls);
void ec_encode_data(int len, int k, int rows, unsigned char *gftbls,
                    unsigned char **data, unsigned char **coding);
int gf_invert_matrix(unsigned char *in_mat, unsigned char *out_mat, const int n);
"""


class IsalKernel:
    """ISA-L's vectorised GF(2^8) kernels, given zfec's generator."""

    name = "isa-l"

    def __init__(self, ffi: Any, lib: Any) -> None:
        self._ffi = ffi
        self._lib = lib
        # Per kernel, bounded: a reader meets few decoding subsets, a process few codes.
        self._inverse = lru_cache(maxsize=256)(self._invert)
        self._tables = lru_cache(maxsize=256)(self._init_tables)

    def code(self, stripes: Sequence[Buffer], m: int, n: int) -> list[bytes]:
        """See :class:`Kernel`."""
        return self._apply(generator(m, n)[m:], stripes)

    def stripes(
        self, fragments: Sequence[Buffer], indices: Sequence[int], m: int, n: int
    ) -> list[bytes]:
        """See :class:`Kernel`: the given data fragments as they are, the missing stripes
        through the inverse of the generator's rows at ``indices``."""
        given = dict(zip(indices, fragments, strict=True))
        missing = [j for j in range(m) if j not in given]
        rows = self._inverse(m, n, tuple(indices))
        made = self._apply(tuple(rows[j] for j in missing), fragments) if missing else []
        made_at = dict(zip(missing, made, strict=True))
        return [bytes(given[j]) if j in given else made_at[j] for j in range(m)]

    def _invert(self, m: int, n: int, indices: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        """The ``m x m`` inverse of the generator's rows at ``indices``."""
        rows = generator(m, n)
        square = self._ffi.new("unsigned char[]", bytes(x for i in indices for x in rows[i]))
        out = self._ffi.new("unsigned char[]", m * m)
        if self._lib.gf_invert_matrix(square, out, m) != 0:
            raise ValueError(f"fragments {indices} of a {m}-of-{n} code do not decode")
        flat = bytes(self._ffi.buffer(out, m * m))
        return tuple(tuple(flat[r * m : (r + 1) * m]) for r in range(m))

    def _init_tables(self, rows: tuple[tuple[int, ...], ...]) -> Any:
        """ISA-L's expanded multiplication tables for the coefficient matrix ``rows``."""
        coefficients = self._ffi.new("unsigned char[]", bytes(x for row in rows for x in row))
        tables = self._ffi.new("unsigned char[]", 32 * len(rows[0]) * len(rows))
        self._lib.ec_init_tables(len(rows[0]), len(rows), coefficients, tables)
        return tables

    def _apply(self, rows: Sequence[tuple[int, ...]], inputs: Sequence[Buffer]) -> list[bytes]:
        """``rows`` (each as long as ``inputs``) times the equal-sized ``inputs``."""
        size = len(inputs[0])
        outputs = [unwritten_bytes(size) for _ in rows]
        if size == 0:
            return outputs
        ffi = self._ffi
        tables = self._tables(tuple(rows))
        held = [ffi.from_buffer(b) for b in (*inputs, *outputs)]
        pointers = [ffi.cast("unsigned char *", h) for h in held]
        data = ffi.new("unsigned char *[]", pointers[: len(inputs)])
        coding = ffi.new("unsigned char *[]", pointers[len(inputs) :])
        self._lib.ec_encode_data(size, len(inputs), len(rows), tables, data, coding)
        del held, pointers
        return outputs


def load_isal() -> IsalKernel | None:
    """ISA-L's kernel, or None where the library (or cffi) is missing."""
    try:
        import cffi
    except ImportError:  # pragma: no cover - pynacl depends on cffi
        return None
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        lib = ffi.dlopen(ISAL_LIBRARY)
    except OSError:
        return None
    return IsalKernel(ffi, lib)


def _wanted(wanted: str | None) -> str:
    """The kernel asked for (``wanted``, else the environment's): ``""``, ``isal`` or
    ``zfec``.

    Raises:
        ValueError: any other name.
    """
    wanted = (wanted if wanted is not None else os.environ.get(KERNEL_ENV, "")).strip().lower()
    if wanted not in ("", "isal", "isa-l", "zfec"):
        raise ValueError(f"{KERNEL_ENV}={wanted!r}: expected isal or zfec")
    return wanted


def choose(wanted: str | None = None) -> Kernel:
    """The kernel this process codes with: ``wanted`` (or the environment's choice), else
    ISA-L where it loads, else zfec.

    Raises:
        ValueError: an unknown name, or ``isal`` asked for where it does not load.
    """
    wanted = _wanted(wanted)
    if wanted == "zfec":
        return ZfecKernel()
    isal = load_isal()
    if isal is not None:
        return isal
    if wanted:
        raise ValueError(f"{KERNEL_ENV}={wanted!r}: {ISAL_LIBRARY} does not load here")
    return ZfecKernel()


@lru_cache(maxsize=1)
def kernel() -> Kernel:
    """This process's kernel, loaded at its first use: cffi parses ISA-L's declarations
    with pycparser, 40-100 ms that a command which codes nothing (most of the CLI) would
    otherwise pay at start-up."""
    return choose()


_wanted(None)  # a misspelt BFTFS_ERASURE_KERNEL is refused at start, not at the first write
