"""``bftfs status -v``'s contributions table (issue 68, docs/bar.md): per node what it says
it stored, served and verified, and what its peers saw of it (the NOTIFYs of its
verification they received, their audits of its storage); the figures are added up by
``node/contributions.rows`` from every node's ``stats``."""

from __future__ import annotations

from typing import Any

from bftfs import local as localmod
from bftfs.node import contributions


def rows(statuses: list[localmod.NodeStatus]) -> list[contributions.Row]:
    """One row per node, from the nodes that answered."""
    return contributions.rows({s.id: s.stats if s.up else None for s in statuses})


def to_json(statuses: list[localmod.NodeStatus]) -> list[dict[str, Any]]:
    return [r.to_json() for r in rows(statuses)]


def _own(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_contributions(statuses: list[localmod.NodeStatus]) -> None:
    """The table: own figures (``-``: the node did not answer), then the peers' word."""
    print("contributions, per node (own word | peers' word: NOTIFYs seen, audits):")
    head = (
        f"  {'node':>4}  {'stored':>7}  {'served':>7}  {'verified':>8}  {'answered':>8}  |"
        f"  {'notifies':>8}  {'passed':>6}  {'failed':>6}  {'missing':>7}  {'late':>5}"
    )
    print(f"{head}  failed by")
    for r in rows(statuses):
        by = ",".join(map(str, r.failed_by)) or "-"
        if len(r.failed_by) > 4:  # the line stays under 100 columns; --json lists them
            by = f"{len(r.failed_by)} nodes"
        print(
            f"  {r.node:>4}  {_own(r.stored):>7}  {_own(r.served):>7}  {_own(r.verified):>8}  "
            f"{_own(r.answered):>8}  |  {r.notifies_seen:>8}  {r.passed:>6}  {r.failed:>6}  "
            f"{r.missing:>7}  {r.late:>5}  {by}"
        )
