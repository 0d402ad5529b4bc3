"""The format of a node's store, stamped in it and checked at every start.

A store written by a newer bftfs may hold records this one misreads; one written by an
older bftfs may need its records rewritten first.  So the store carries its format number
(a ``format`` key in its ``store.meta`` database), and a node opening it:

- finds none: a store made before the stamp existed (format 1, the layout it has) or a new
  one (nothing to migrate): it stamps :data:`~bftfs.STORE_FORMAT`;
- finds an older one: runs the steps that bring it up to date, in order, each in one
  transaction with the new stamp, so a node killed midway starts the remaining steps again
  (:data:`MIGRATIONS`);
- finds a newer one: refuses to start, naming both formats, and changes nothing (a rolling
  downgrade past a format change is not supported: docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bftfs import STORE_FORMAT, __version__

#: The database and key of the stamp.
META_DB = b"store.meta"
FORMAT_KEY = b"format"
#: The format of a store that has data but no stamp: the layout before the stamp.
UNSTAMPED = 1
#: Steps from format ``k`` to ``k + 1``, by ``k``: each rewrites what changed, given the
#: LMDB environment and a write transaction.
MIGRATIONS: dict[int, Callable[[Any, Any], None]] = {}


def _to_2(env: Any, txn: Any) -> None:
    """Format 1 to 2: nothing to rewrite.  Format 2 may store a version's answer split
    (``qu/schema.py``, ``"nk"``), which a format-1 bftfs would read as the answer itself;
    records of format 1 read as they are.  The stamp keeps an older bftfs off the store."""


MIGRATIONS[1] = _to_2


class StoreFormatError(Exception):
    """The store was written by a newer bftfs than this one (the message says both)."""


def settle(env: Any, path: object) -> int:
    """Check, migrate and stamp the store in LMDB environment ``env`` (at ``path``, for the
    message); its format from now on.

    Raises:
        StoreFormatError: the store's format is newer than this bftfs reads.
    """
    with env.begin(write=True) as txn:
        meta = env.open_db(META_DB, txn=txn)
        raw = txn.get(FORMAT_KEY, db=meta)
        if raw is None:
            has_data = any(k != META_DB for k, _ in txn.cursor())
            found = UNSTAMPED if has_data else STORE_FORMAT
        else:
            found = int(raw.decode())
        if found > STORE_FORMAT:
            raise StoreFormatError(
                f"the store at {path} is format {found}, written by a newer bftfs; this one "
                f"({__version__}) reads formats up to {STORE_FORMAT}: run the newer bftfs "
                "(docs/operations.md, 'Upgrades')"
            )
        if raw is None and found == STORE_FORMAT:
            txn.put(FORMAT_KEY, str(found).encode(), db=meta)
    while found < STORE_FORMAT:
        with env.begin(write=True) as txn:
            MIGRATIONS[found](env, txn)
            found += 1
            txn.put(FORMAT_KEY, str(found).encode(), db=env.open_db(META_DB, txn=txn))
    return found
