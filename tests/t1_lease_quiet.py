"""Tier 1: a writer's turn keeps others' leases off the object for ``QUIET`` (issue 64,
``client-hoard``; ``bftfs/fsobjects/leases.py``, ``_quiet_after``).

A walker holding a shared lease on a directory, recalled by a writer's change, used to be
granted the lease again the moment the change landed, so the writer's next change was
refused ``leased`` and recalled again: from a walker that never releases (or releases
just before its term ends), a wait of its whole term per change.  A holder that releases
promptly still takes its lease back at once.  Each test is the sequence of methods the nodes
run on one object state, deterministic."""

from __future__ import annotations

from typing import Any

import pytest

from bftfs.fsobjects import FS, new_dir
from bftfs.fsobjects.leases import QUIET, QUIET_KEY, SHARED, SLOW_RELEASE, holders
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry([FS])
DIR, SUB = 16, 22
WALKER, WRITER, OTHER = 101, 102, 103
S = 10**9
T0 = 1_700_000_000 * S
TERM = 8 * S


def update(method: str, state: Any, caller: int, **arg: Any) -> Any:
    """``method`` on ``DIR`` (and ``SUB``, a name in it, for a mkdir): the new ``DIR``."""
    states = {DIR: state, SUB: None} if method == "fs.mkdir" else {DIR: state}
    raw, _ = REG.update(method, states, arg, caller)
    return unpack(raw[DIR])


def lease(state: Any, caller: int, at: int) -> Any:
    return update("fs.lease", state, caller, kind=SHARED, lt=at, term=TERM, lm=0)


def mkdir(state: Any, caller: int, at: int, name: bytes) -> Any:
    arg: dict[str, Any] = {"name": name, "p": DIR, "o": SUB, "mode": 0o755, "uid": 0}
    return update("fs.mkdir", state, caller, **arg, gid=0, now=at, lt=at, lm=0)


def recall(state: Any, caller: int, at: int) -> Any:
    return update("fs.recall", state, caller, lt=at, lm=0)


def refused(code: str, fn: Any, *args: Any) -> None:
    with pytest.raises(MethodRefused) as e:
        fn(*args)
    assert e.value.code == code


def test_a_walker_that_releases_late_and_retakes_costs_a_writer_one_wait() -> None:
    """The walker releases only as its term is about to end and asks again before each of
    the writer's changes, which come every 5 s: one wait in all; then, with the writer
    gone quiet, the walker is granted its lease again."""
    d = lease(new_dir(1, 0o755, 0, 0, T0), WALKER, T0)
    refused("leased", mkdir, d, WRITER, T0 + S, b"n0")
    d = recall(d, WRITER, T0 + S)
    d = update("fs.release", d, WALKER, lt=T0 + TERM - S, lm=0)
    at = T0 + TERM - S // 2
    d = mkdir(d, WRITER, at, b"n0")  # its turn: the change lands
    for k in range(1, 20):  # 95 s of changes, each after a refused retake
        refused("recalled", lease, d, WALKER, at + S)
        at += 5 * S
        d = mkdir(d, WRITER, at, b"n%d" % k)  # no recall, no refusal
        assert "ls" not in d
    refused("recalled", lease, d, WALKER, at + QUIET - 1)
    assert holders(lease(d, WALKER, at + QUIET))[0][0] == WALKER


def test_a_walker_that_releases_promptly_leases_again_at_once() -> None:
    d = lease(new_dir(1, 0o755, 0, 0, T0), WALKER, T0)
    d = recall(d, WRITER, T0 + S)
    d = update("fs.release", d, WALKER, lt=T0 + S + S // 10, lm=0)
    d = mkdir(d, WRITER, T0 + S + SLOW_RELEASE, b"x")
    assert QUIET_KEY not in d
    assert holders(lease(d, WALKER, T0 + S + SLOW_RELEASE))[0][0] == WALKER


def test_a_walker_that_never_releases_costs_the_writer_one_term_per_quiet_gap() -> None:
    """The walker keeps its lease to the end of its term and asks again at once: it is
    refused while the writer keeps changing the object, so the writer waits for that one
    term, not one per change."""
    d = lease(new_dir(1, 0o755, 0, 0, T0), WALKER, T0)
    d = recall(d, WRITER, T0 + S)
    ended = T0 + TERM
    refused("leased", mkdir, d, WRITER, ended - S, b"a")
    d = mkdir(d, WRITER, ended, b"a")  # the walker's term ran out
    refused("recalled", lease, d, WALKER, ended)
    d = mkdir(d, WRITER, ended + QUIET - S, b"b")  # within the quiet: it starts again
    refused("recalled", lease, d, WALKER, ended + QUIET + S)


def test_the_writer_and_nobody_else_may_lease_during_its_quiet() -> None:
    d = lease(new_dir(1, 0o755, 0, 0, T0), WALKER, T0)
    d = recall(d, WRITER, T0 + S)
    d = mkdir(d, WRITER, T0 + TERM, b"x")
    refused("recalled", lease, d, OTHER, T0 + TERM + S)
    assert holders(lease(d, WRITER, T0 + TERM + S))[0][0] == WRITER


def test_a_change_that_recalled_nothing_keeps_nobody_out() -> None:
    """Uncontended writes leave the object as leasable as before."""
    d = mkdir(new_dir(1, 0o755, 0, 0, T0), WRITER, T0, b"x")
    assert QUIET_KEY not in d
    assert holders(lease(d, WALKER, T0 + S))[0][0] == WALKER


def test_a_stat_leaves_the_quiet_out() -> None:
    d = lease(new_dir(1, 0o755, 0, 0, T0), WALKER, T0)
    d = recall(d, WRITER, T0 + S)
    d = mkdir(d, WRITER, T0 + TERM, b"x")
    assert d[QUIET_KEY] == [WRITER, T0 + TERM + QUIET]
    assert QUIET_KEY not in REG.query("fs.stat", {DIR: d}, {})
