"""The erasure code's two kernels write the same fragments (bftfs/erasure_kernel.py).

ISA-L is given zfec's generator matrix, so a block written by either is read by the other:
nothing on disk, on the wire or in a cross checksum depends on which kernel a process has.
"""

from __future__ import annotations

import itertools
import random

import pytest

from bftfs import erasure_kernel
from bftfs.erasure_kernel import IsalKernel, ZfecKernel

CONFIGS = [(1, 2), (2, 4), (3, 6), (4, 11), (5, 11), (3, 16)]


@pytest.fixture(scope="module")
def isal() -> IsalKernel:
    kernel = erasure_kernel.load_isal()
    # scripts/setup.sh installs Debian's libisal2: here it must load, not fall back.
    assert kernel is not None, f"{erasure_kernel.ISAL_LIBRARY} did not load"
    return kernel


def test_the_process_codes_with_isal_where_it_loads() -> None:
    assert erasure_kernel.choose("").name == "isa-l"
    assert erasure_kernel.choose("zfec").name == "zfec"
    with pytest.raises(ValueError, match="expected isal or zfec"):
        erasure_kernel.choose("fast")


@pytest.mark.parametrize("m,n", CONFIGS)
@pytest.mark.parametrize("size", [1, 31, 4096, 349_526])
def test_isal_codes_and_decodes_as_zfec_does(isal: IsalKernel, m: int, n: int, size: int) -> None:
    rnd = random.Random(size * 131 + m * 7 + n)
    stripes = [rnd.randbytes(size) for _ in range(m)]
    code = isal.code(stripes, m, n)
    assert code == ZfecKernel().code(stripes, m, n)
    assert all(type(c) is bytes and len(c) == size for c in code)
    fragments = stripes + code
    subsets = list(itertools.combinations(range(n), m))
    for subset in subsets[:: max(1, len(subsets) // 25)]:
        given = [fragments[i] for i in subset]
        assert isal.stripes(given, subset, m, n) == stripes, subset
        assert ZfecKernel().stripes(given, subset, m, n) == stripes, subset


def test_generator_is_systematic_and_its_code_rows_are_zfecs() -> None:
    rows = erasure_kernel.generator(3, 6)
    assert rows[:3] == ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    unit = [bytes([0]), bytes([1]), bytes([0])]  # the second stripe alone
    assert [c[0] for c in ZfecKernel().code(unit, 3, 6)] == [row[1] for row in rows[3:]]


def test_isal_reads_views_and_bytearrays_without_changing_them(isal: IsalKernel) -> None:
    rnd = random.Random(5)
    stripes = [bytearray(rnd.randbytes(1000)) for _ in range(3)]
    before = [bytes(s) for s in stripes]
    views = [memoryview(s) for s in stripes]
    assert isal.code(views, 3, 6) == ZfecKernel().code(before, 3, 6)
    assert [bytes(s) for s in stripes] == before
