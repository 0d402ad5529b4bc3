"""A revert or restore whose write fails says which and how far it got (exit 8), instead
of a traceback: ``bftfs.cli.restore`` over a real directory, the failure a real
``OSError`` from the file system."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bftfs.cli.common import EXIT_WRITE
from bftfs.cli.restore import WriteFailed, _carry_out
from bftfs.fs.history import Action


def test_a_failed_step_stops_the_revert_and_names_it(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "gone-too").write_bytes(b"b")
    steps = [
        Action("move", "a", "b"),
        Action("move", "missing", "c"),  # fails: nothing of that name
        Action("remove", "gone-too"),  # after the failure: not tried
    ]
    seen: list[tuple[int, int]] = []
    with pytest.raises(WriteFailed) as got:
        trio.run(_carry_out, None, tmp_path, steps, lambda d, t: seen.append((d, t)))
    assert got.value.exitcode == EXIT_WRITE
    message = str(got.value)
    assert "1 of 3 steps failed" in message and "move missing -> c" in message
    assert "No such file or directory" in message and "1 done, 1 not tried" in message
    assert (tmp_path / "b").read_bytes() == b"a" and (tmp_path / "gone-too").exists()
    assert seen == [(1, 3)]


def test_a_revert_that_succeeds_does_every_step(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    steps = [Action("move", "a", "d/b"), Action("remove", "d/b")]
    trio.run(_carry_out, None, tmp_path, steps, lambda d, t: None)
    assert (tmp_path / "d").is_dir() and not (tmp_path / "d" / "b").exists()
