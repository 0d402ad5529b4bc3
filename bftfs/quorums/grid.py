"""The grid constructions (seed 001 Example 4.8, L162-168, and Example 5.8, L227-231).

``n = k * k`` servers in a ``k x k`` grid, server ``u`` at row ``u // k``, column
``u % k``.  A quorum is ``columns`` full columns and ``rows`` full rows: the masking grid
takes one column and ``2f + 1`` rows (the column of one quorum crosses the rows of another
in ``2f + 1`` servers), the dissemination grid one column and ``f + 1`` rows.  The shape is
a parameter so a weakened grid (too few rows, no column, too small a grid) can be built
and shown its violating pair by ``bftfs/quorums/check.py``.

Its load falls as ``O(f / sqrt(n))`` (L168-170), against the threshold systems' constant
load above ``1/2``; its fault tolerance is what it pays: ``k - 2f`` crashed servers in
distinct rows leave only ``2f`` full rows, so the masking grid survives ``k - 2f - 1``
crashes, not ``n - q`` (:func:`grid_fault_tolerance`).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from itertools import combinations
from math import isqrt

from bftfs.quorums.systems import SetSystem, mask
from bftfs.quorums.threshold import Kind


def row(k: int, i: int) -> int:
    """Row ``i`` of a ``k x k`` grid."""
    return mask(range(i * k, (i + 1) * k))


def column(k: int, j: int) -> int:
    """Column ``j`` of a ``k x k`` grid."""
    return mask(range(j, k * k, k))


def grid_rows(kind: Kind, f: int) -> int:
    """Rows a quorum takes: ``2f + 1`` masking (L166), ``f + 1`` dissemination (L229)."""
    if kind is Kind.MASKING:
        return 2 * f + 1
    if kind is Kind.DISSEMINATION:
        return f + 1
    raise ValueError("seed 001 gives no opaque grid (an opaque system's load is >= 1/2)")


def grid_min_side(kind: Kind, f: int) -> int:
    """The smallest ``k``: ``3f + 1`` masking (L162), ``2f + 1`` dissemination (L227)."""
    return grid_rows(kind, f) + f


def grid_side(n: int) -> int:
    """``k`` with ``n = k * k``.

    Raises:
        ValueError: ``n`` is not a square.
    """
    k = isqrt(n)
    if k * k != n:
        raise ValueError(f"a grid needs n = k*k servers, not {n}")
    return k


def grid(k: int, rows: int, columns: int = 1) -> SetSystem:
    """Every union of ``columns`` columns and ``rows`` rows of a ``k x k`` grid."""
    if not (0 <= rows <= k and 0 <= columns <= k and rows + columns > 0):
        raise ValueError(f"a {k}x{k} grid has no quorum of {columns} column(s), {rows} row(s)")
    cols = [mask_of(column, k, js) for js in combinations(range(k), columns)]
    rws = [mask_of(row, k, is_) for is_ in combinations(range(k), rows)]
    sets = tuple(sorted({c | r for c in cols for r in rws}))
    return SetSystem(k * k, sets, f"{k}x{k} grid, {columns} column(s) + {rows} row(s)")


def mask_of(line: Callable[[int, int], int], k: int, indices: tuple[int, ...]) -> int:
    """The union of the grid lines (``row`` or ``column``) at ``indices``."""
    out = 0
    for i in indices:
        out |= line(k, i)
    return out


def grid_quorum_size(k: int, rows: int) -> int:
    """A column and ``rows`` rows: ``(rows + 1) k - rows`` servers."""
    return (rows + 1) * k - rows


def grid_load(k: int, rows: int) -> Fraction:
    """``((rows + 1) k - rows) / k^2``: the uniform strategy's load, equal to Cor. 4.6's
    ``c / n`` (L168), e.g. ``((2f + 2) sqrt(n) - (2f + 1)) / n`` for the masking grid."""
    return Fraction(grid_quorum_size(k, rows), k * k)


def grid_fault_tolerance(k: int, rows: int) -> int:
    """Crashes a one-column grid always survives: ``min(k, k - rows + 1) - 1``; no quorum
    is left when every
    column is hit (``k`` crashes) or fewer than ``rows`` rows stay whole (``k - rows + 1``
    crashes in distinct rows)."""
    return min(k, k - rows + 1) - 1
