"""Tier 1: an unmount waits longer for the mount daemon than the daemon may spend sending
what it held back, so that a clean unmount never kills a daemon in the middle of it."""

from __future__ import annotations

from bftfs.fs import session
from bftfs.fuse import control

#: What the daemon spends after its write-back at most: leases, then locks, 5 s each.
AFTER_WRITE_BACK = 5.0 + 5.0


def test_the_unmount_outwaits_the_daemons_write_back_at_end() -> None:
    assert control.DAEMON_EXIT_WAIT > session.WRITE_BACK_AT_END + AFTER_WRITE_BACK
    assert control.NOTICE_AFTER < control.DAEMON_EXIT_WAIT
