"""Tier 1: an unmount lets the mount daemon go idle longer than the daemon waits for
progress while it sends what it held back, so that a clean unmount never kills a daemon
in the middle of it."""

from __future__ import annotations

from bftfs.fs import session
from bftfs.fuse import control

#: What the daemon spends after its write-back at most: leases, then locks, 5 s each.
AFTER_WRITE_BACK = 5.0 + 5.0


def test_the_unmount_outwaits_the_daemons_write_back_at_end() -> None:
    assert control.DAEMON_IDLE_WAIT > session.WRITE_BACK_STALLED + AFTER_WRITE_BACK
    assert control.NOTICE_AFTER < control.DAEMON_IDLE_WAIT
