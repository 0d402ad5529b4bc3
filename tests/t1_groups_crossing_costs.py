"""What a cross-group rename costs through the mount's router (issue 66, docs/layout.md
"Costs"): Q/U rounds and node requests of ``GroupedQU`` over the in-memory groups of
``t1_groups_crossing.py`` (the types read, the transaction, the stats read back),
against a rename within one group.

``PYTHONPATH=tests .venv/bin/python tests/t1_groups_crossing_costs.py`` prints them.
"""

from __future__ import annotations

import time

from t1_groups_crossing import Groups, mkdir, rename_arg, tree, virtual

from bftfs.fs.clients.groups import GroupedQU

#: Renames measured after the tree is made (the clients' caches then hold the histories).
RENAMES = 20


def _rounds(qu: GroupedQU) -> int:
    assert qu.crossing is not None
    mount = sum(c.statistics().rounds for c in qu.clients)
    return mount + sum(c.statistics().rounds for c in qu.crossing.driver.groups)  # type: ignore[attr-defined]


def measure() -> dict[str, float]:
    """Per rename, across groups and within one group: rounds, node requests and the CPU
    of the process (the client and all 18 nodes, in memory)."""
    g = Groups()
    out: dict[str, float] = {}

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        near = await mkdir(g, qu, a, b"near", g.layout.group_of_object(a))
        for key, other in (("cross", b), ("local", near)):
            r0, q0 = _rounds(qu), sum(c.requests for c in g.clusters)
            t0 = time.process_time()
            for i in range(RENAMES):
                src, dst = (a, other) if i % 2 == 0 else (other, a)
                sn, dn = (b"f", b"g") if i % 2 == 0 else (b"g", b"f")
                await qu.update(sorted({a, other, f}), "fs.rename", rename_arg(src, sn, dst, dn, f))
            out[f"{key}_cpu_ms"] = (time.process_time() - t0) * 1000 / RENAMES
            out[f"{key}_rounds"] = (_rounds(qu) - r0) / RENAMES
            out[f"{key}_requests"] = (sum(c.requests for c in g.clusters) - q0) / RENAMES

    virtual(main)
    return out


def test_a_cross_group_rename_through_the_mount_costs_a_bounded_number_of_rounds() -> None:
    m = measure()
    assert m["local_rounds"] == 1
    # reads (2 at once), begin, 2 prepares, decide, 2 finishes, 3 stats at once: 11,
    # plus a repair now and then of a history a group client's cache missed.
    assert 10 <= m["cross_rounds"] <= 14
    assert m["cross_requests"] > 6 * m["local_requests"]


if __name__ == "__main__":
    for k, v in measure().items():
        print(f"{k}: {v:.2f}")
