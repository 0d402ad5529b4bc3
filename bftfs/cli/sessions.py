"""Who is connected to the cluster, wherever their mounts run (issue 67; ``ceph tell mds
client ls``, ``juicefs status``): each node lists its clients' open sessions and ``bftfs
status`` joins the lists, so an administrator sees the laptops, not only this machine's
mounts, and which bftfs each runs (its hello says: ``net/session.py``), so that a mount
left behind by an upgrade shows (``cli/status.mixed_versions``)."""

from __future__ import annotations

import time
from typing import Any

from bftfs import local as localmod
from bftfs.cli.statustables import duration


def client_sessions(
    statuses: list[localmod.NodeStatus], names: dict[int, str]
) -> list[dict[str, Any]]:
    """One row per client, address and version: its name, the nodes it holds a session
    with, since when (the earliest), the requests it sent them (summed), and the bftfs and
    wire version it speaks (None: a node of 0.1.0 reported it, which does not know),
    busiest first.  Two processes of one client on one machine are told apart by their
    versions only (a mount of 0.1.0 and ``bftfs status`` itself, of 0.2.0, in an upgrade)."""
    rows: dict[tuple[int, str, str | None, int | None], dict[str, Any]] = {}
    for s in statuses:
        if not s.up or s.stats is None:
            continue
        for session in s.stats.get("sessions") or []:
            client, host = int(session["client"]), str(session["address"]).rsplit(":", 1)[0]
            version, wire = session.get("version"), session.get("wire")
            row = rows.setdefault(
                (client, host, version, wire),
                {
                    "client": names.get(client, f"#{client}"),
                    "id": client,
                    "host": host,
                    "nodes": [],
                    "since": session["since"],
                    "requests": 0,
                    "version": version,
                    "wire": wire,
                },
            )
            if s.id not in row["nodes"]:
                row["nodes"].append(s.id)
            row["since"] = min(row["since"], session["since"])
            row["requests"] += int(session["requests"])
    return sorted(rows.values(), key=lambda r: (-r["requests"], r["client"], r["host"]))


def print_sessions(rows: list[dict[str, Any]], now: float | None = None) -> None:
    """The table ``bftfs status -v`` prints under the mounts."""
    if not rows:
        print("  sessions: none (no client connected)")
        return
    now = time.time() if now is None else now
    print("  client      from              nodes    connected  requests  version")
    for r in rows:
        age = duration(now - r["since"])
        nodes = len(r["nodes"])
        print(
            f"  {r['client']:<11} {r['host']:<17} {nodes:>5}  {age:>11}  {r['requests']:>8}  "
            f"{version_label(r)}"
        )


def version_label(row: dict[str, Any]) -> str:
    """``0.2.0 (wire 6)``; ``?`` when no node that answered reports it (all of 0.1.0)."""
    if row.get("wire") is None:
        return "?"
    return f"{row.get('version') or '?'} (wire {row['wire']})"
