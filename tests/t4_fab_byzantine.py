"""The two-mount consistency checker on a FaB cluster with a Byzantine leader, a Byzantine
acceptor, or its leaders killed (issue 39).

Node processes of an ``engine = "fab"`` cluster, node 0 (the leader of regency 0) run as
``bftfs node --byzantine fab-lying-leader`` (``testing/byzantine/profiles.py``: it
equivocates, claims accepts and REPs it never made and answers clients with made-up
results), two real FUSE mounts: seeded create/write/append/truncate/rename/unlink/read
from both, every read checked against close-to-open semantics
(``bftfs.testing.consistency``), and the liar replaced by a view change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bftfs.local import query_status
from bftfs.testing import consistency
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]


def test_two_mounts_close_to_open_with_a_lying_fab_leader(tmp_path: Path) -> None:
    liar = {0: ["--byzantine", "fab-lying-leader"]}
    with consistency.mounted(tmp_path, 2, engine="fab", node_args=liar) as (cluster, dirs):
        report = consistency.run(cluster, dirs, seed=1, ops=100, faults=0)
        stats = [s.stats or {} for s in trio.run(query_status, cluster.config)]
    print(report.text())
    assert report.steps == 100 and sum(report.ops.values()) > 60
    fab = [(st.get("progress") or {}).get("fab") or {} for st in stats]
    assert all(f.get("regency", 0) >= 1 for f in fab[1:]), fab  # the liar was replaced


def test_two_mounts_close_to_open_with_a_lying_fab_acceptor(tmp_path: Path) -> None:
    """Node 3, not a leader of the first regencies, accepts and reports made-up values and
    answers clients with made-up results: the learn quorum and the clients' reply
    certificates outvote it, so no view change is needed and none may lose a write."""
    liar = {3: ["--byzantine", "fab-lying-acceptor"]}
    with consistency.mounted(tmp_path, 2, engine="fab", node_args=liar) as (cluster, dirs):
        report = consistency.run(cluster, dirs, seed=2, ops=100, faults=0)
    print(report.text())
    assert report.steps == 100 and sum(report.ops.values()) > 60


def test_two_mounts_close_to_open_on_fab_with_nodes_killed_and_restarted(tmp_path: Path) -> None:
    """No liar; two nodes in turn SIGKILLed and restarted (one down at a time, `f` = 1):
    seed 6 kills node 0, the leader of regency 0, then node 1, the leader of regency 1.
    Each leader's death costs a view change, a restarted node takes the others' state
    (checkpoint, log), and the mounts' calls go on."""
    with consistency.mounted(tmp_path, 2, engine="fab") as (cluster, dirs):
        report = consistency.run(cluster, dirs, seed=6, ops=100, faults=2)
        stats = [s.stats or {} for s in trio.run(query_status, cluster.config)]
    print(report.text())
    assert report.steps == 100 and sum(report.ops.values()) > 60
    assert report.schedule == [
        "op 12: kill node 0",
        "op 37: start node 0",
        "op 62: kill node 1",
        "op 87: start node 1",
    ], report.schedule
    # Both leaders were replaced: the nodes up during the second change are in regency 2
    # at least (node 1, restarted 13 operations before the end, may still be catching up).
    fab = [(st.get("progress") or {}).get("fab") or {} for st in stats]
    assert all(f.get("regency", 0) >= 2 for i, f in enumerate(fab) if i != 1), fab
