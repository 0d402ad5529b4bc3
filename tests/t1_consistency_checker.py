"""The consistency checker itself (``bftfs.testing.consistency``), on the local disk.

A checker that cannot fail proves nothing: two views of one local directory (strictly
consistent) must pass, and two separate directories posing as mounts of one file system
(every write lost to the other) must be caught, as must a mount that answers stale bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bftfs.testing.consistency import Checker, Inconsistent, Report, fault_schedule


def _checker(dirs: list[Path], seed: int = 3) -> Checker:
    return Checker(dirs, random.Random(seed), Report(seed, len(dirs)))


def test_two_views_of_one_local_directory_pass(tmp_path: Path) -> None:
    checker = _checker([tmp_path, tmp_path, tmp_path])
    for _ in range(400):
        checker.step()
    checker.check_all()
    assert checker.report.steps == 400 and sum(checker.report.ops.values()) > 300
    assert {"write", "append", "read", "rename", "unlink"} <= set(checker.report.ops)


def test_separate_directories_are_caught(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    checker = _checker([tmp_path / "a", tmp_path / "b"])
    with pytest.raises((Inconsistent, FileNotFoundError)):
        for _ in range(400):
            checker.step()
        checker.check_all()


def test_a_mount_with_stale_bytes_is_caught(tmp_path: Path) -> None:
    """A 'mount' whose reads answer an old copy of every file (a cache never revalidated)."""
    real, stale = tmp_path / "real", tmp_path / "stale"
    real.mkdir()
    stale.mkdir()
    checker = _checker([real, stale], seed=5)
    with pytest.raises((Inconsistent, FileNotFoundError)):
        for i in range(400):
            checker.step()
            if i % 50 == 0:  # the stale view catches up now and then, then falls behind
                for f in stale.iterdir():
                    f.unlink()
                for f in real.iterdir():
                    (stale / f.name).write_bytes(f.read_bytes())


def test_fault_schedule_has_one_node_down_at_a_time() -> None:
    sched = fault_schedule(random.Random(1), 400, 6, 4)
    down: set[int] = set()
    victims = []
    for i in sorted(sched):
        verb, node = sched[i]
        if verb == "kill":
            assert not down
            down.add(node)
            victims.append(node)
        else:
            assert down == {node}
            down.clear()
    assert not down and len(set(victims)) == 4
