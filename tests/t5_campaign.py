"""Tier 5: the generated adversary campaign (issue 18, ``bftfs/testing/campaign.py``).

Any ``b`` nodes (any placement) switch Byzantine behaviour per request across the whole
Q/U and PASIS catalogue, faulty nodes crash inside requests and come back, and two or three
clients run file-system operations through the real ``FileSystem``; every read is checked
against a close-to-open model, history reads (what a name held at a moment between two
earlier rounds) against the model then, every operation must complete, and the Q/U and
PASIS histories recorded under the file system must be linearizable.  ``make test`` runs a
short seeded campaign (3 schedules of 25 operations, 10 to 20 s) and a shorter one with
shared leases (their recalls withheld and forged by the Byzantine nodes too); the slow suite
runs 16 schedules of 80 operations, with ``t = 2, b = 1`` on nine nodes among them, and 8
with leases, each on three worker processes (``campaign_workers.py``; the report is a
serial run's).

A failure's message starts with the schedule (seed, thresholds, Byzantine and crash-prone
nodes) and the command that replays it, followed by the last operations and faults.
"""

from __future__ import annotations

import logging
import os
import random
import time
import warnings
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from checklogs import ExpectLog

from bftfs.testing.byzantine import history, qu, rw
from bftfs.testing.campaign import (
    SLOW_THRESHOLDS,
    Outcome,
    Report,
    Schedule,
    _faults,
    campaign,
)
from bftfs.testing.campaign_workers import default_workers, in_workers, run_all
from bftfs.testing.consistency import NAMES


def _check(report: Report, schedules: int) -> None:
    print(report.text())  # shown with -s, and with the failure
    assert not report.findings, "\n\n".join(report.findings)
    assert report.schedules == schedules
    lies = {k for k, v in report.behaviours.items() if v and not k.endswith(":honest")}
    # Both protocols were lied about, per request, in the same run.
    assert any(k.split(":")[0] in qu.KINDS for k in lies), lies
    assert any(k.split(":")[0] in rw.ALL_KINDS for k in lies), lies
    assert report.qu_ops > 0 and report.rw_ops > 0
    # History reads were checked: names before they existed, and contents then.
    assert report.ops["final history absent"] > 0 and report.ops["final history file"] > 0


# Byzantine nodes the clients prove malevolent, and crashed nodes' catch-ups that a crash
# or a lying peer leaves incomplete, are reported: both are what the campaign does.
MALEVOLENT = pytest.mark.expected_logs(
    "bftfs.qu.ohscache", "WARNING", match=r"^Q/U server \d+ is malevolent"
)
CATCHUP_INCOMPLETE = pytest.mark.expected_logs(
    "bftfs.node.qu_catchup", "WARNING", match=r"^Q/U catch-up: \{'state': 'incomplete'"
)
# The same for a PASIS catch-up: when crashed, withholding or slow peers leave fewer than
# N - t - 1 block lists by its LIST_TIMEOUT, the pass ends "failed" and says so.
RW_CATCHUP_INCOMPLETE = pytest.mark.expected_logs(
    "bftfs.node", "WARNING", match=r"^node \d+: rw catch-up: only \d+ peers listed their blocks"
)


@MALEVOLENT
@CATCHUP_INCOMPLETE
@RW_CATCHUP_INCOMPLETE
def test_a_short_seeded_campaign_finds_nothing(tmp_path: Path) -> None:
    report = campaign(tmp_path, seed=1, schedules=3, ops=25)
    _check(report, 3)


@MALEVOLENT
@CATCHUP_INCOMPLETE
@RW_CATCHUP_INCOMPLETE
def test_a_short_seeded_campaign_with_leases_finds_nothing(tmp_path: Path) -> None:
    report = campaign(tmp_path, seed=101, schedules=2, ops=25, lease_term=10.0)
    _check(report, 2)
    assert report.leases["taken"] > 0


@pytest.mark.slow  # 19 s
@MALEVOLENT
@CATCHUP_INCOMPLETE
@RW_CATCHUP_INCOMPLETE
def test_two_workers_run_the_serial_campaign(tmp_path: Path) -> None:
    """The same schedules, each counted once: what their seeds fix adds up the same.  (How
    many requests reach a Byzantine node, and so the lies told, whether an armed crash
    happens before the next round and so the rounds drawn after it, and whether a history
    read is decided, depend on the sockets' interleaving: two serial runs differ there.)"""
    serial = campaign(tmp_path / "serial", seed=7, schedules=4, ops=10, workers=1)
    parallel = campaign(tmp_path / "parallel", seed=7, schedules=4, ops=10, workers=2)
    for report in (serial, parallel):
        _check(report, 4)
    ran = [{p.name for p in (tmp_path / side).iterdir()} for side in ("serial", "parallel")]
    assert ran[0] == ran[1] == {f"schedule{s}" for s in range(7, 11)}
    clients = sum(Schedule.draw(s, 10).clients for s in range(7, 11))
    assert serial.ops["final read"] == parallel.ops["final read"] == clients * len(NAMES)
    finals = [
        sum(v for k, v in r.ops.items() if k.startswith("final history"))
        for r in (serial, parallel)
    ]
    assert finals[0] == finals[1] == 4 * 2 * len(NAMES)


class _Node:
    """A faulty node's crash arming, as :func:`campaign._faults` uses it."""

    def __init__(self) -> None:
        self.armed: list[int] = []

    def arm_crash(self, after: int) -> None:
        self.armed.append(after)


class _Nodes:
    """Which nodes are down; ``recover`` leaves them down (a node slow to come back)."""

    def __init__(self, crashed: set[int]) -> None:
        self.crashed = crashed

    async def recover(self, i: int) -> None:
        pass


def test_a_schedules_fault_draws_do_not_depend_on_when_a_crash_lands() -> None:
    """A crash armed for a node's k-th request lands when the sockets' interleaving says,
    so whether a node is down at a round differs between two runs of one seed.  The fault
    draws (and, on their own stream, the operations) must not follow it, or one seed runs
    different schedules from run to run (seed 2 ran 45 to 47 operations in 17 to 19 rounds
    and took 1.7 to 16 s at load 2 to 7): the stream is left in the same state, and the
    crash arming draws the same values, whether or not a node is down."""

    async def rounds(rng: random.Random, crashed: set[int], node: _Node) -> None:
        for r in range(30):
            faulty = {0: cast(Any, node)}
            await _faults(cast(Any, _Nodes(set(crashed))), faulty, rng, r, {}, Outcome())

    states = []
    for crashed in (set(), {0}):
        rng, node = random.Random(5), _Node()
        trio.run(rounds, rng, crashed, node)
        states.append(rng.random())
        assert bool(node.armed) == (not crashed)  # a node down is never armed
    assert states[0] == states[1]


def _logs(n: int) -> int:
    logging.getLogger("bftfs.testing.probe").warning("job %d", n)
    return 2 * n


def _fails(n: int) -> int:
    if n == 1:
        raise ValueError(f"job {n} failed")
    return n


def _warns() -> None:
    warnings.warn("a warning in a worker", UserWarning, stacklevel=1)


def _dies() -> None:
    os._exit(3)


def test_what_a_worker_logs_warns_and_raises_reaches_the_test(expect_log: ExpectLog) -> None:
    """Log records come back in job order (checklogs.py sees them); the test's warning
    filters (``error``) hold in the workers; a failure and a dead worker raise here."""
    with expect_log("bftfs.testing.probe", match=r"^job \d$", count=3):
        assert run_all(_logs, [(1,), (2,), (3,)], 2) == [2, 4, 6]
    with pytest.raises(ValueError, match="job 1 failed"):
        run_all(_fails, [(0,), (1,), (2,)], 2)
    with pytest.raises(UserWarning, match="a warning in a worker"):
        run_all(_warns, [()], 2)
    with pytest.raises(BrokenProcessPool):
        run_all(_dies, [()], 2)
    assert default_workers(5) == int(os.environ.get("BFTFS_TEST_WORKERS", 5))


def test_workers_left_early_are_killed_not_waited_for() -> None:
    start = time.monotonic()
    with in_workers(time.sleep, [(0.0,), (600.0,), (600.0,)], 2) as futures:
        next(futures).result()
    assert time.monotonic() - start < 60


#: The long campaigns' own time limit: they ran 4-5 minutes, near the suite's 300 s, and on
#: a machine twice as slow (CI, 2026-11-26) pytest-timeout cut them off inside trio.run,
#: which broke the tests after them too.
LONG_CAMPAIGN = pytest.mark.timeout(900)
#: Processes running the long campaigns' schedules: one schedule keeps about 0.6 of a core
#: busy (it also waits: delays, withheld replies), so three on two cores pay (measured 233 s
#: serially, 142 s on two, 98 s on three); ``BFTFS_TEST_WORKERS=1`` runs them in the test
#: process.
LONG_WORKERS = default_workers(3)


@pytest.mark.slow
@LONG_CAMPAIGN
@MALEVOLENT
@CATCHUP_INCOMPLETE
@RW_CATCHUP_INCOMPLETE
def test_a_long_seeded_campaign_with_leases_finds_nothing(tmp_path: Path) -> None:
    report = campaign(
        tmp_path, seed=2000, schedules=8, ops=80, thresholds=SLOW_THRESHOLDS, lease_term=10.0,
        workers=LONG_WORKERS,
    )  # fmt: skip
    _check(report, 8)
    assert report.leases["taken"] > 0 and report.leases["recalled"] > 0
    drawn = {k.split(":")[1] for k, v in report.behaviours.items() if v}
    assert {"withhold-recall", "forge-recall"} <= drawn, drawn


@pytest.mark.slow
@LONG_CAMPAIGN
@MALEVOLENT
@CATCHUP_INCOMPLETE
@RW_CATCHUP_INCOMPLETE
def test_a_long_seeded_campaign_finds_nothing(tmp_path: Path) -> None:
    report = campaign(
        tmp_path, seed=1000, schedules=16, ops=80, thresholds=SLOW_THRESHOLDS, workers=LONG_WORKERS
    )
    _check(report, 16)
    assert report.crashes > 0
    # The history lies (issue 31) were told, and history reads met them.
    lies = {k.split(":")[0] for k, v in report.behaviours.items() if not k.endswith(":honest")}
    assert lies & set(history.KINDS), lies
    assert report.ops["history file"] > 0
