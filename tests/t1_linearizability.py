"""The register linearizability checker, on histories with known answers.

Each rejected history breaks exactly one rule (a stale read after a completed write, a read
of a value never written, reads that see two writes in opposite orders); each accepted one
needs the checker to use a freedom the definition gives (overlap, pending writes).
"""

from __future__ import annotations

import random

import pytest

from bftfs.testing.linearizability import READ, WRITE, Op, Recorder, check, check_register


def w(value: object, start: float, end: float | None, key: object = 0) -> Op:
    return Op(key, WRITE, value, start, end)


def r(value: object, start: float, end: float | None, key: object = 0) -> Op:
    return Op(key, READ, value, start, end)


def test_sequential_history_is_linearizable() -> None:
    assert check_register([w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7)], None)


def test_read_of_initial_value_before_any_write() -> None:
    assert check_register([r(None, 0, 1), w(1, 2, 3)], None)


def test_stale_read_after_completed_write_is_rejected() -> None:
    assert not check_register([w(1, 0, 1), w(2, 2, 3), r(1, 4, 5)], None)


def test_read_of_a_value_never_written_is_rejected() -> None:
    assert not check_register([w(1, 0, 1), r(7, 2, 3)], None)


def test_read_concurrent_with_write_may_see_either_value() -> None:
    assert check_register([w(1, 0, 1), w(2, 2, 6), r(1, 3, 4)], None)
    assert check_register([w(1, 0, 1), w(2, 2, 6), r(2, 3, 4)], None)


def test_new_old_inversion_between_sequential_reads_is_rejected() -> None:
    # The second read starts after the first ended, so it cannot go back to the old value.
    assert not check_register([w(1, 0, 1), w(2, 2, 10), r(2, 3, 4), r(1, 5, 6)], None)


def test_two_readers_seeing_concurrent_writes_in_opposite_orders_is_rejected() -> None:
    ops = [
        w(1, 0, 10),
        w(2, 0, 10),
        r(1, 1, 2),
        r(2, 3, 4),  # so 1 then 2 ...
        r(2, 1, 2),
        r(1, 3, 4),  # ... and 2 then 1: impossible together
    ]
    assert not check_register(ops, None)


def test_a_long_history_is_checked_in_segments_between_quiet_moments() -> None:
    # 20 000 operations in one search would be 20 000 frames deep; cut where nothing is in
    # flight, each segment is two operations.
    ops = []
    for k in range(10_000):
        ops += [w(k, 4 * k, 4 * k + 1), r(k, 4 * k + 2, 4 * k + 3)]
    assert check_register(ops, None)
    ops[-1] = r(0, ops[-1].start, ops[-1].end)
    assert not check_register(ops, None)


def test_every_value_a_segment_can_end_with_carries_into_the_next() -> None:
    # Two concurrent writes end the first segment: either may be the register's value after
    # it, so a later read of either is legal, but both orders cannot hold at once.
    first = [w(1, 0, 3), w(2, 1, 4)]
    assert check_register([*first, r(1, 5, 6)], None)
    assert check_register([*first, r(2, 5, 6)], None)
    assert not check_register([*first, r(2, 5, 6), r(1, 7, 8)], None)
    assert not check_register([*first, r(None, 5, 6)], None)


def test_pending_write_may_take_effect_late_or_never() -> None:
    assert check_register([w(1, 0, 1), w(2, 2, None), r(1, 3, 4)], None)
    assert check_register([w(1, 0, 1), w(2, 2, None), r(2, 3, 4), r(2, 5, 6)], None)
    # ... but once seen, it cannot be unseen by a later read.
    assert not check_register([w(1, 0, 1), w(2, 2, None), r(2, 3, 4), r(1, 5, 6)], None)


def test_pending_read_constrains_nothing() -> None:
    assert check_register([w(1, 0, 1), r(99, 2, None)], None)


def test_registers_are_checked_independently() -> None:
    ops = [w(1, 0, 1, key="a"), w(1, 0, 1, key="b"), r(1, 2, 3, key="a"), r(None, 2, 3, key="b")]
    verdict = check(ops, None)
    assert not verdict and verdict.key == "b"
    assert check(ops[:3], None)


def test_op_validation() -> None:
    with pytest.raises(ValueError):
        Op(0, "append", 1, 0, 1)
    with pytest.raises(ValueError):
        Op(0, READ, 1, 2, 1)


def _random_history(rng: random.Random, *, corrupt: bool) -> list[Op]:
    """A history produced by an atomic register with random op intervals around it."""
    ops: list[Op] = []
    value: object = None
    t = 0.0
    for i in range(12):
        t += rng.random()
        point = t  # the linearization point
        start, end = point - rng.random() * 2, point + rng.random() * 2
        if rng.random() < 0.5:
            value = i
            ops.append(w(i, start, end))
        else:
            ops.append(r(value, start, end))
    if corrupt:
        reads = [k for k, op in enumerate(ops) if op.kind == READ]
        if reads:
            k = rng.choice(reads)
            ops[k] = r("never-written", ops[k].start, ops[k].end)
    return ops


@pytest.mark.parametrize("seed", range(30))
def test_histories_of_an_atomic_register_are_accepted(seed: int) -> None:
    assert check_register(_random_history(random.Random(seed), corrupt=False), None)


@pytest.mark.parametrize("seed", range(10))
def test_corrupted_histories_are_rejected(seed: int) -> None:
    ops = _random_history(random.Random(seed), corrupt=True)
    if any(op.value == "never-written" for op in ops):
        assert not check_register(ops, None)


def test_recorder_records_intervals_and_pending_writes() -> None:
    ticks = iter(range(100))
    rec = Recorder(clock=lambda: float(next(ticks)))
    with rec.write("k", 1):
        pass
    with rec.read("k") as box:
        box.append(1)
    with pytest.raises(RuntimeError), rec.write("k", 2):
        raise RuntimeError("writer died")
    assert [(op.kind, op.value, op.end is None) for op in rec.ops] == [
        (WRITE, 1, False),
        (READ, 1, False),
        (WRITE, 2, True),
    ]
    assert check(rec.ops, None)
