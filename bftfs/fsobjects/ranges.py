"""A file's records of byte ranges, and its write lease (docs/fs-api.md; issue 31, item 9).

An attribute object keeps, as lists of at most :data:`~bftfs.fsobjects.limits.MAX_EXTENTS`
``[lo, hi)`` pairs:

- ``w``, the written ranges: what writes stored in blocks below the size (what
  ``st_blocks`` counts, and what a remover gives back);
- ``z``, the stale ranges: what lies at or beyond the size and may hold bytes no reader may
  see (see :func:`add_stale`): what a client growing the file clears first;
- ``wl``, the write lease ``[token, until, declared]``: who may write the file's blocks
  until when, and the ranges its holder said it would write (:func:`settle_lease`).

Objects made before a record existed have none (None) and behave as before: counted as
dense, and growing clears the whole gap.  These helpers change a state in place; the
methods that call them (:mod:`bftfs.fsobjects.data`, :mod:`bftfs.fsobjects.attributes`)
copy it first.
"""

from __future__ import annotations

from typing import Any

from bftfs.fsobjects.limits import MAX_EXTENTS, MAX_OID, MAX_SIZE
from bftfs.fsobjects.state import check_opt_int, check_time
from bftfs.qu.objects import MethodRefused

# Written ranges ----------------------------------------------------------------------------


def merge_extents(extents: list[list[int]], limit: int = MAX_EXTENTS) -> list[list[int]]:
    """Byte ranges ``[lo, hi)`` sorted and joined where they touch or overlap; while more
    than ``limit`` remain, the two with the smallest gap between them become one (the
    record may then count a gap as written: it errs towards a dense file, as before)."""
    out: list[list[int]] = []
    for lo, hi in sorted(extents):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    while len(out) > limit:
        i = min(range(len(out) - 1), key=lambda j: out[j + 1][0] - out[j][1])
        out[i : i + 2] = [[out[i][0], out[i + 1][1]]]
    return out


def check_ranges(a: dict[str, Any], key: str) -> list[list[int]] | None:
    """The argument's byte ranges ``key`` (at most :data:`MAX_EXTENTS` ``[lo, hi)`` pairs
    within ``[0, MAX_SIZE]``), None when absent."""
    got = a.get(key)
    if got is None:
        return None
    if not isinstance(got, list) or len(got) > MAX_EXTENTS:
        raise MethodRefused("invalid", f"{key} must be a list of at most {MAX_EXTENTS} ranges")
    for r in got:
        ok = isinstance(r, list) and len(r) == 2
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
        if not ok or not 0 <= r[0] < r[1] <= MAX_SIZE:
            raise MethodRefused("invalid", f"{key} ranges must be [lo, hi) with 0 <= lo < hi")
    return [[r[0], r[1]] for r in got]


def written_ranges(a: dict[str, Any], f: dict[str, Any]) -> list[list[int]] | None:
    """``f``'s record of the byte ranges written to its blocks (``w``) with the ranges the
    argument says this write stored (``w``: at most :data:`MAX_EXTENTS` pairs), clipped at
    the reservation (nothing beyond it was written).

    Written data is what ``st_blocks`` counts, so sparse files look sparse (``du``,
    ``cp --sparse``, ``tar -S``).  Servers cannot see which blocks a client wrote: a lie
    here changes only the reported block count, never data or sizes.  An object made
    before the record existed has none (None) and stays counted as dense.
    """
    got = check_ranges(a, "w")
    if got is None:
        return f.get("w")
    ranges = [[lo, min(hi, f["alloc"])] for lo, hi in got if lo < f["alloc"]]
    old = f.get("w")
    return None if old is None else merge_extents(old + ranges)


def leaving_inline(f: dict[str, Any]) -> list[list[int]] | None:
    """The record of written ranges of a file whose inline content moves to block 0."""
    if f.get("w") is None:
        return None
    n = int(f["size"])  # not len(i): sealed content is longer than the file
    return [[0, n]] if n else []


# Stale ranges ------------------------------------------------------------------------------


def add_stale(f: dict[str, Any], ranges: list[list[int]], start: int) -> None:
    """Add the parts of ``ranges`` in ``[start, alloc)`` to ``f``'s record of stale ranges
    (``z``), if it keeps one (joining the closest beyond :data:`MAX_EXTENTS`).

    ``z`` lists the byte ranges at or beyond the size whose blocks may hold bytes no
    reader may see (the file's written ranges a truncation cut off, the blocks a write
    lease's holder said it would write and never completed; for an inline file, anything
    in its unused blocks): what a client growing the file clears first, and what a
    remover gives back with the written ranges.  Nothing else beyond the size was ever
    written (by a correct client), so growing costs what was written there, not the gap.
    An object made before the record existed has none (None): growing it clears the
    whole gap up to ``alloc``, as before."""
    z = f.get("z")
    if z is None:
        return
    end = int(f["alloc"])
    add = [[max(lo, start), min(hi, end)] for lo, hi in ranges if hi > start and lo < end]
    if add:
        f["z"] = merge_extents(z + add)


def clip_stale(f: dict[str, Any], size: int) -> None:
    """Forget the stale ranges below ``size``: the client that set it cleared them."""
    z = f.get("z")
    if z:
        f["z"] = [[max(lo, size), hi] for lo, hi in z if hi > size]


def _stale_start(f: dict[str, Any]) -> int:
    """Where stale bytes matter: from the size, or everywhere for an inline file (whose
    blocks are all unused)."""
    return 0 if f.get("i") is not None else int(f["size"])


# The write lease ---------------------------------------------------------------------------


def _lease_holder(f: dict[str, Any], now: int) -> int | None:
    """The token of the client holding ``f``'s write lease at ``now`` (None: free)."""
    lease = f.get("wl")
    if lease is None or now >= lease[1]:
        return None
    return int(lease[0])


def not_locked_by_other(f: dict[str, Any], a: dict[str, Any]) -> None:
    """Refuse as ``locked`` while another client's write lease runs (``tok``, ``now``: the
    caller's lease token and clock; a caller without a token holds no lease)."""
    holder = _lease_holder(f, check_time(a))
    if holder is not None and holder != check_opt_int(a, "tok", 1, MAX_OID):
        raise MethodRefused("locked", "another client is writing this file's blocks")


def settle_lease(f: dict[str, Any], a: dict[str, Any], *, completed: bool) -> None:
    """Settle what the file's write lease declared it would write (``wl[2]``): dropped
    when its holder (``tok``) completes now (``fs.write``: every block it wrote lies
    below the size it sets, and the gap up to there it cleared), else moved into the
    stale ranges (a holder that died or gave up may have written any of it)."""
    lease = f.get("wl")
    if lease is None or len(lease) < 3:
        return
    if not (completed and lease[0] == check_opt_int(a, "tok", 1, MAX_OID)):
        add_stale(f, lease[2], _stale_start(f))
    f["wl"] = [lease[0], lease[1]]


def lease_declaration(f: dict[str, Any], a: dict[str, Any]) -> list[list[int]]:
    """The ranges a new lease's holder will write (the argument's ``z``, clipped at the
    reservation; absent: anywhere below it)."""
    end = int(f["alloc"])
    declared = check_ranges(a, "z")
    if declared is None:
        return [[0, end]] if end else []
    return merge_extents([[lo, min(hi, end)] for lo, hi in declared if lo < end])
