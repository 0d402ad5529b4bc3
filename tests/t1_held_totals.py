"""Tier 1: a step's ledger totals held in memory and written once (``accounting.HeldTotals``)
leave the store exactly as charging through the store itself does."""

from __future__ import annotations

import random

from bftfs.accounting import QU, RW, HeldTotals, used
from bftfs.kv import MemoryKV


def _charges(view: MemoryKV | HeldTotals, rng: random.Random) -> list[dict[int, int]]:
    """A seeded mix of charges, recharges and releases; the totals some scans saw between."""
    seen = []
    for _ in range(rng.randrange(1, 60)):
        ledger = rng.choice((QU, RW))
        key = bytes([rng.randrange(8)])
        owner = rng.randrange(3)
        kind = rng.randrange(4)
        if kind == 0:
            ledger.charge(view, key, owner, rng.randrange(1, 100))
        elif kind == 1:
            ledger.recharge(view, key, owner, rng.randrange(0, 100))
        elif kind == 2:
            ledger.release(view, key)
        else:
            seen.append(ledger.usages(view))
    return seen


def test_held_totals_write_what_charging_through_the_store_writes() -> None:
    for seed in range(300):
        plain, held = MemoryKV(), MemoryKV()
        for step in range(3):
            want = _charges(plain, random.Random(seed * 10 + step))
            view = HeldTotals(held)
            assert _charges(view, random.Random(seed * 10 + step)) == want
            for owner in range(3):  # read through the view before the flush
                assert used(view, owner) == used(plain, owner)
            view.flush()
            for ledger in (QU, RW):
                assert list(held.scan(ledger.totals, b"", b"\xff" * 9)) == list(
                    plain.scan(ledger.totals, b"", b"\xff" * 9)
                )
                assert list(held.scan(ledger.charges, b"", b"\xff" * 9)) == list(
                    plain.scan(ledger.charges, b"", b"\xff" * 9)
                )
