"""Capacity in ``bftfs status`` (issue 67): each node's disk and LMDB map, as Ceph's
``nearfull``/``full`` and ``zpool list``'s CAP tell an operator before writes fail.

A node reports (``stats``, ``node/service.py``) its map size, the bytes of the map holding
data (``used_bytes``: freed pages are reused, so this, not the file's high-water mark, is
how full the map is) and ``statvfs`` of its data directory.  Either past :data:`NEARFULL`
makes the cluster degraded; past :data:`FULL` the node is about to refuse writes
(``full``, which a mount reports as ENOSPC).  Pure: statuses in, problem lines out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bftfs.cli.common import human

#: Fraction used at which a node is reported ``nearfull`` (the cluster is degraded).
NEARFULL = 0.85
#: Fraction used at which a node is reported ``full`` (its writes are about to be refused).
FULL = 0.95


@dataclass(frozen=True)
class Fill:
    """How full one node's map and disk are (fractions 0..1; None: not reported)."""

    node: int
    map_used: int
    map_size: int
    disk_total: int | None
    disk_free: int | None

    @property
    def map_fraction(self) -> float:
        return self.map_used / self.map_size if self.map_size > 0 else 0.0

    @property
    def disk_fraction(self) -> float | None:
        if not self.disk_total or self.disk_free is None:
            return None
        return 1.0 - self.disk_free / self.disk_total

    def to_json(self) -> dict[str, Any]:
        return {
            "map_used": self.map_used,
            "map_size": self.map_size,
            "map_fraction": round(self.map_fraction, 4),
            "disk_total": self.disk_total,
            "disk_free": self.disk_free,
            "disk_fraction": None if self.disk_fraction is None else round(self.disk_fraction, 4),
            "state": state(self),
        }


def fill_of(node: int, stats: dict[str, Any] | None) -> Fill | None:
    """The fill a node's ``stats`` report; None for a node that did not answer (a node
    from before ``map_bytes`` and ``disk`` reports neither: nothing is judged of it)."""
    if stats is None:
        return None
    disk = stats.get("disk") or {}
    return Fill(
        node=node,
        map_used=int(stats.get("used_bytes") or 0),
        map_size=int(stats.get("map_bytes") or 0),
        disk_total=None if disk.get("total") is None else int(disk["total"]),
        disk_free=None if disk.get("free") is None else int(disk["free"]),
    )


def _word(fraction: float | None) -> str:
    if fraction is None or fraction < NEARFULL:
        return "ok"
    return "full" if fraction >= FULL else "nearfull"


def state(fill: Fill) -> str:
    """``ok``, ``nearfull`` or ``full``: the worse of map and disk."""
    words = (_word(fill.map_fraction), _word(fill.disk_fraction))
    return "full" if "full" in words else "nearfull" if "nearfull" in words else "ok"


def problems(fills: list[Fill]) -> list[str]:
    """One problem line per node past :data:`NEARFULL` on its map or its disk."""
    out = []
    for f in fills:
        parts = []
        if _word(f.map_fraction) != "ok":
            parts.append(
                f"map {_word(f.map_fraction)} ({f.map_fraction:.0%} of {human(f.map_size)} used)"
            )
        disk = f.disk_fraction
        if disk is not None and _word(disk) != "ok":
            assert f.disk_free is not None and f.disk_total is not None
            parts.append(
                f"disk {_word(disk)} ({disk:.0%} used, {human(f.disk_free)} free of "
                f"{human(f.disk_total)})"
            )
        if parts:
            then = (
                "writes to it are refused, or soon will be (clients see ENOSPC)"
                if state(f) == "full"
                else "free space or grow it"
            )
            out.append(f"node {f.node}: {', '.join(parts)}: {then}")
    return out


def maps_beyond_disk(cfg: Any) -> list[str]:
    """A warning for each disk on which this machine's nodes' LMDB maps may grow past its
    free space (``init`` and ``up`` say it: the maps are sparse and grow as data comes, so
    the disk fills before the maps do, and the nodes on it refuse writes together).  Nodes
    whose data directory is not here (other machines) are not counted."""
    from bftfs.node.limits import disk_space, nodes_by_disk

    out = []
    for specs in nodes_by_disk(cfg).values():
        space = disk_space(specs[0].data_dir)
        if space is None:
            continue
        free = space["free"]
        maps = len(specs) * cfg.map_size
        if maps > free:
            ids = ", ".join(str(s.id) for s in specs)
            out.append(
                f"the LMDB maps of node(s) {ids} may grow to {human(maps)} "
                f"({len(specs)} x map_size {human(cfg.map_size)}) but their disk has "
                f"{human(free)} free: it fills first (bftfs status: nearfull at "
                f"{NEARFULL:.0%}); give a smaller --map-size or more disk"
            )
    return out
