"""What a cross-group rename costs (issue 66, docs/layout.md "Costs"): Q/U rounds and the
nodes' CPU, in the in-memory groups of ``t1_txn.py``, against a rename within one group
(``kv.move``, one update of two objects).

``PYTHONPATH=tests .venv/bin/python tests/t1_txn_costs.py`` prints the figures.
"""

from __future__ import annotations

import time
from typing import Any

from t1_txn import Groups, put, rename, virtual

from bftfs.layout.txn import Driver, Part
from bftfs.qu.client import QUClient

#: Renames measured after a warm-up one (the clients' caches then hold the histories).
RENAMES = 20


def _timed(g: Groups) -> list[float]:
    """Wrap every node's request handling to add its CPU time to the returned cell."""
    spent = [0.0]
    for c in g.clusters:
        honest = c._honest

        def timed(*a: Any, honest: Any = honest) -> Any:
            t0 = time.process_time()
            try:
                return honest(*a)
            finally:
                spent[0] += time.process_time() - t0

        c._honest = timed  # type: ignore[method-assign]
    return spent


def _rounds(d: Driver) -> int:
    """The Q/U rounds ``d``'s group clients ran so far."""
    return sum(c.statistics().rounds for c in d.groups if isinstance(c, QUClient))


def measure() -> dict[str, float]:
    """Rounds and node CPU per operation: a cross-group rename, a rename in one group."""
    g = Groups()
    spent = _timed(g)
    out: dict[str, float] = {}

    async def main() -> None:
        d = g.driver(0)
        for i in range(RENAMES + 1):
            await put(g, 0, 1, f"a{i}", i)
        await d.run(rename("a0", "b0", 0), 0, g.record)  # warm-up
        rounds0 = _rounds(d)
        cpu0 = spent[0]
        for i in range(1, RENAMES + 1):
            assert (await d.run(rename(f"a{i}", f"b{i}", i), 0, g.record)).committed
        rounds = _rounds(d) - rounds0
        out["txn_rounds"] = rounds / RENAMES
        out["txn_node_cpu_ms"] = (spent[0] - cpu0) * 1e3 / RENAMES
        one = g.client(0, 0)
        for i in range(RENAMES + 1):
            await one.update(5, "kv.put", [f"s{i}", i])
        await one.update([5, 6], "kv.move", [5, "s0", 6, "t0"])  # warm-up
        r0, c0 = one.statistics().rounds, spent[0]
        for i in range(1, RENAMES + 1):
            await one.update([5, 6], "kv.move", [5, f"s{i}", 6, f"t{i}"])
        out["local_rounds"] = (one.statistics().rounds - r0) / RENAMES
        out["local_node_cpu_ms"] = (spent[0] - c0) * 1e3 / RENAMES

    virtual(main)
    return out


def test_a_cross_group_rename_takes_six_rounds_four_in_sequence() -> None:
    """Uncontended, with warm caches: begin, two prepares, decide, two finishes, each one
    round (the prepares and the finishes run in parallel: four in sequence)."""
    m = measure()
    assert m["txn_rounds"] == 6.0
    assert m["local_rounds"] == 1.0
    assert m["txn_node_cpu_ms"] > m["local_node_cpu_ms"]


def test_a_one_part_transaction_is_four_rounds() -> None:
    g = Groups()

    async def main() -> None:
        d = g.driver(0)
        await d.run([Part(1, (2,), "kv.put", ["w", 0])], 1, g.record)
        r0 = _rounds(d)
        assert (await d.run([Part(1, (2,), "kv.put", ["x", 1])], 1, g.record)).committed
        # begin, prepare, decide, finish
        assert _rounds(d) - r0 == 4

    virtual(main)


if __name__ == "__main__":
    for k, v in measure().items():
        print(f"{k}: {v:.2f}")
