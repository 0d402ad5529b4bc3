"""Tier 1: which inodes' attributes the kernel holds (``fuse/kernelheld.py``): told with
an answer's timeout, dropped after the requests that make the kernel drop them."""

from __future__ import annotations

import os

from bftfs.fuse.kernelheld import KernelHeld
from bftfs.fuse.paths import KnownPaths


def _held(*inos: int) -> KernelHeld:
    held = KernelHeld()
    for ino in inos:
        held.told(ino, 60.0)
    return held


def test_told_attributes_are_held_for_their_timeout_only() -> None:
    held = _held(5)
    held.told(6, 0.0)  # a zero timeout: the kernel asks again at once
    assert held.holds(5)
    assert not held.holds(6)
    assert not held.holds(7)
    held.dropped([5])
    assert not held.holds(5)


def test_requests_after_which_the_kernel_drops_attributes_drop_them() -> None:
    paths = KnownPaths()
    paths.opened(40, 9)
    held = _held(1, 2, 3, 9, 10)
    held.after(paths, "write", (None, 40, 0, b"x"))  # through handle 40: inode 9
    assert not held.holds(9)
    held.after(paths, "create", (None, 1, b"f", 0o644, 0, None))  # the parent's entries
    assert not held.holds(1)
    held.after(paths, "rename", (None, 2, b"a", 3, b"b", 0, None))  # both parents
    assert not held.holds(2) and not held.holds(3)
    held.after(paths, "open", (None, 10, os.O_RDONLY, None))  # no truncation: kept
    assert held.holds(10)
    held.after(paths, "open", (None, 10, os.O_WRONLY | os.O_TRUNC, None))
    assert not held.holds(10)


def test_requests_that_change_no_attribute_drop_nothing() -> None:
    paths = KnownPaths()
    held = _held(1, 2)
    held.after(paths, "getattr", (None, 1, None))
    held.after(paths, "lookup", (None, 1, b"x", None))
    held.after(paths, "read", (None, 77, 0, 10))  # a handle not known here
    assert held.holds(1) and held.holds(2)
