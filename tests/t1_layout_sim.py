"""The simulation of many groups (issue 66, ``benchmarks/groups_sim.py``): a short run with
few groups, the real Q/U client and node handling on simulated time, throughput growing
with the groups; deterministic for a seed; the nodes' calendars serve messages FIFO by
arrival whatever order they are computed in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import groups_sim  # noqa: E402
from groups_sim import Calendar, run_point  # noqa: E402


def test_a_calendar_fills_gaps_by_arrival() -> None:
    cal = Calendar()
    assert cal.serve(10.0, 1.0) == 11.0
    # Computed later but arriving earlier: served before, in the gap.
    assert cal.serve(2.0, 1.0) == 3.0
    # Does not fit in the gap before 10: after the last interval it overlaps.
    assert cal.serve(9.5, 1.0) == 12.0
    assert cal.serve(3.0, 2.0) == 5.0
    assert cal.busy == 5.0


def test_throughput_grows_with_groups() -> None:
    one = run_point(1, clients=24, files=2, transactions=3)
    three = run_point(3, clients=24, files=2, transactions=3)
    # Every operation went through a quorum of the group's nodes (q = 5 of 6).
    for p in (one, three):
        assert p.operations > 0 and p.messages >= 5 * p.operations
    # One group is saturated: its busiest node is busy nearly all the window.
    assert one.busiest_node_share > 0.9
    assert three.throughput > 2.0 * one.throughput, (one, three)


def test_the_run_is_deterministic_for_a_seed() -> None:
    a = run_point(2, clients=8, files=1, transactions=2, seed=5)
    assert run_point(2, clients=8, files=1, transactions=2, seed=5) == a
    assert run_point(2, clients=8, files=1, transactions=2, seed=6) != a


@pytest.mark.parametrize("groups", [1, 50])
def test_the_layout_routes_every_client_to_a_group_of_six_across_domains(groups: int) -> None:
    from bftfs.layout.builder import build

    layout = build(groups_sim.cluster_nodes(), groups, partitions=groups_sim.PARTITIONS)
    assert len(layout.nodes) == 300 and len(layout.groups) == groups
    assert all(len({layout.node(m).domain for m in g.members}) == 6 for g in layout.groups)
