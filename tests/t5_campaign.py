"""Tier 5: the generated adversary campaign (issue 18, ``bftfs/testing/campaign.py``).

Any ``b`` nodes (any placement) switch Byzantine behaviour per request across the whole
Q/U and PASIS catalogue, faulty nodes crash inside requests and come back, and two or three
clients run file-system operations through the real ``FileSystem``; every read is checked
against a close-to-open model, every operation must complete, and the Q/U and PASIS
histories recorded under the file system must be linearizable.  ``make test`` runs a short
seeded campaign (3 schedules of 25 operations, 10 to 20 s); the slow suite runs 30
schedules of 60 operations, with ``t = 2, b = 1`` on nine nodes among them.

A failure's message starts with the schedule (seed, thresholds, Byzantine and crash-prone
nodes) and the command that replays it, followed by the last operations and faults.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bftfs.testing.byzantine import qu, rw
from bftfs.testing.campaign import SLOW_THRESHOLDS, Report, campaign


def _check(report: Report, schedules: int) -> None:
    print(report.text())  # shown with -s, and with the failure
    assert not report.findings, "\n\n".join(report.findings)
    assert report.schedules == schedules
    lies = {k for k, v in report.behaviours.items() if v and not k.endswith(":honest")}
    # Both protocols were lied about, per request, in the same run.
    assert any(k.split(":")[0] in qu.KINDS for k in lies), lies
    assert any(k.split(":")[0] in rw.ALL_KINDS for k in lies), lies
    assert report.qu_ops > 0 and report.rw_ops > 0


def test_a_short_seeded_campaign_finds_nothing(tmp_path: Path) -> None:
    report = campaign(tmp_path, seed=1, schedules=3, ops=25)
    _check(report, 3)


@pytest.mark.slow
def test_a_long_seeded_campaign_finds_nothing(tmp_path: Path) -> None:
    report = campaign(tmp_path, seed=1000, schedules=30, ops=60, thresholds=SLOW_THRESHOLDS)
    _check(report, 30)
    assert report.crashes > 0
