"""Tier 1: how long a FaB call waits for ``f + 1`` matching replies (``fab/metaclient.py``
``_Waiting``): slow is not unavailable under a mount's patience, as for Q/U (issue 60).

A leader killed under the slow suite's load (a view change, then the restarted node's
catch-up) took longer than the mount's ``timeo`` of 10 s, and the call answered EIO with
five of six nodes up (``t4_fab_byzantine.py``'s two mounts with nodes killed and restarted).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bftfs.fab.metaclient import _Waiting
from bftfs.outcome import Patience


def _endpoint(live: list[bool]) -> Any:
    """An endpoint whose ``quorum_live`` answers what ``live[0]`` says at the time."""
    return SimpleNamespace(quorum_live=lambda now: live[0])


def test_a_call_waits_while_a_quorum_is_live_and_runs_down_timeo_only_without_one() -> None:
    live = [True]
    w = _Waiting(60.0, Patience(10.0, 0.0), _endpoint(live), 0.0)
    assert w.left(5.0) == 10.0  # live: the wait starts again
    assert w.left(500.0) == 10.0  # however long the nodes take, with a quorum live
    live[0] = False  # fewer than a quorum: timeo runs down from the last live moment
    assert w.left(504.0) == 6.0
    assert w.left(510.0) <= 0


def test_a_soft_patience_runs_down_however_many_nodes_are_live() -> None:
    w = _Waiting(60.0, Patience(10.0, 0.0, soft=True), _endpoint([True]), 0.0)
    assert w.left(4.0) == 6.0
    assert w.left(10.0) <= 0


def test_without_a_mount_s_patience_the_client_s_own_timeout_holds() -> None:
    w = _Waiting(60.0, None, _endpoint([True]), 0.0)
    assert w.left(30.0) == 30.0
    assert w.left(60.0) <= 0
