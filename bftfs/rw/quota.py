"""Per-client storage quota of PASIS block versions on one node: who each stored version
is charged to, and each owner's total (synchronous steps over a ``KV``).

The PASIS side of the shared accounting (:mod:`bftfs.accounting`, ledger ``RW``; the Q/U
side is ``qu/schema.py``'s).  Each new version is charged to the writer its timestamp names,
with its size as the store holds it (key plus value): a client's own write is sent by that
writer (the frame authenticates it), and a repair - a write naming another writer - is
taken only when ``b + 1`` other nodes host that very version (``node/rw_server.py``), so
the name is never one a client made up for new data.  The charge
and the owner's total (``rw.charge``, ``rw.usage``, layout in schema.py) change in the same
transaction as the version itself: :func:`charge` when a version is put, :func:`release`
when one is deleted (garbage collection, poisonous discards).

:func:`over` is the quota rule, checked against :func:`used` - the owner's block versions
*and* Q/U records, one figure per client: a *non-empty* version that would take its owner
past the quota is refused; empty versions (what fs/files/reclaim.py writes over removed files'
blocks) always pass, so a client over its quota can still free space.
"""

from __future__ import annotations

from bftfs.accounting import RW, over, used
from bftfs.kv import KV
from bftfs.rw.schema import DB_VERSIONS

__all__ = ["audit", "charge", "over", "owner_of", "release", "usage_of", "usages", "used"]

#: Bytes of block versions charged to an owner (``used`` adds its Q/U records).
usage_of = RW.usage_of
#: Every owner's block-version total.
usages = RW.usages
#: Charge a version just put (once: a re-put version keeps its first charge).
charge = RW.charge
#: Give back the charge of a version just deleted.
release = RW.release
#: Whom a stored version is charged to.
owner_of = RW.owner_of


def audit(kv: KV) -> tuple[dict[int, int], int]:
    """The totals recomputed from the charges of versions still stored, and how many
    charges name a version that is gone (a check for tests: both must match the
    store's ``rw.usage`` and zero)."""
    return RW.audit(kv, lambda key: kv.has(DB_VERSIONS, key))
