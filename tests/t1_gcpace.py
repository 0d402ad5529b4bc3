"""The mount's full garbage collections (``bftfs/gcpace.py``): run while the mount is quiet
once the young generations have been collected often enough, forced after
``FULL_EVERY`` seconds of constant load, never while there is nothing to collect; and the
CallRecord's quiet signal they follow.  Trio's mock clock: no real waiting."""

from __future__ import annotations

import gc

import trio
import trio.testing

from bftfs import gcpace
from bftfs.fuse.callrecord import CallRecord


def _run(quiet_at: set[int], pending: list[int], seconds: float) -> tuple[dict, list[float]]:
    """Run the pacer ``seconds`` of mock time; quiet at the whole seconds in ``quiet_at``;
    ``pending[0]`` young collections since the last full one (a full one resets it).
    Its stats and the times it collected."""
    times: list[float] = []

    def collect() -> int:
        times.append(trio.current_time())
        pending[0] = 0
        return 0

    pacer = gcpace.FullCollections(
        lambda now: int(now) in quiet_at, pending=lambda: pending[0], collect=collect
    )

    async def main() -> None:
        with trio.move_on_after(seconds):
            await pacer.run()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return pacer.stats, times


def test_a_quiet_mount_collects_once_the_young_generations_ran_often_enough() -> None:
    stats, times = _run(quiet_at={3, 4, 5, 6}, pending=[gcpace.MIN_YOUNG], seconds=8)
    assert times == [3.0] and stats["quiet"] == 1 and stats["forced"] == 0


def test_nothing_to_collect_no_collection_however_quiet() -> None:
    stats, times = _run(quiet_at=set(range(100)), pending=[gcpace.MIN_YOUNG - 1], seconds=90)
    assert times == [] and stats == {
        "quiet": 0,
        "forced": 0,
        "seconds": 0.0,
        "longest": 0.0,
        "rest": 0.0,
    }


def test_constant_load_forces_one_after_full_every_seconds() -> None:
    """Never quiet: one collection at ``FULL_EVERY``; it resets the young count, which
    stays below ``MIN_YOUNG`` after (nothing allocated in this test), so no other."""
    stats, times = _run(quiet_at=set(), pending=[gcpace.MIN_YOUNG], seconds=3 * gcpace.FULL_EVERY)
    assert times == [gcpace.FULL_EVERY] and stats["forced"] == 1 and stats["quiet"] == 0


def test_a_busy_mount_collects_at_full_every_while_young_collections_go_on() -> None:
    pending = [gcpace.MIN_YOUNG]

    async def main() -> list[float]:
        times: list[float] = []

        def collect() -> int:
            times.append(trio.current_time())
            return 0  # the young generations keep running: pending stays high

        pacer = gcpace.FullCollections(lambda _: False, pending=lambda: pending[0], collect=collect)
        with trio.move_on_after(2 * gcpace.FULL_EVERY + 1):
            await pacer.run()
        assert pacer.stats["forced"] == 2
        return times

    times = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert times == [gcpace.FULL_EVERY, 2 * gcpace.FULL_EVERY]


def test_the_call_record_is_quiet_only_with_nothing_in_flight_for_a_while() -> None:
    record = CallRecord()
    assert record.quiet(0.0, gcpace.QUIET)  # never asked anything
    number = record.begin("read", 0.0, lambda: "/f")
    assert not record.quiet(100.0, gcpace.QUIET)
    record.end(number)
    record.last_done = 100.0
    assert not record.quiet(100.0 + gcpace.QUIET / 2, gcpace.QUIET)
    assert record.quiet(100.0 + 2 * gcpace.QUIET, gcpace.QUIET)


def test_take_over_stops_automatic_full_collections_and_keeps_the_young_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gcpace.take_over()
        young, middle, full = gc.get_threshold()
        assert (young, middle) == before[:2] and full == gcpace.NEVER
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_node_is_quiet_only_with_no_client_request_in_flight_for_a_while() -> None:
    """``node/main.py``: a node's full collections wait for a gap in client requests."""
    from types import SimpleNamespace
    from typing import Any, cast

    from bftfs.node.main import _quiet

    server = SimpleNamespace(client_inflight=1, last_client_request=0.0)
    quiet = _quiet(cast(Any, server))
    assert not quiet(100.0)  # one in flight
    server.client_inflight = 0
    server.last_client_request = 100.0
    assert not quiet(100.0 + gcpace.QUIET / 2)
    assert quiet(100.0 + 2 * gcpace.QUIET)


def _pacer_times(quiet: bool, freed: int, seconds: float, growth: int = 0) -> list[float]:
    """When a pacer collects over ``seconds`` of mock time, always quiet or never, the
    young generations running all along, each collection finding ``freed`` objects, the
    process's resident memory growing by ``growth`` bytes a second."""

    async def main() -> list[float]:
        times: list[float] = []

        def collect() -> int:
            times.append(trio.current_time())
            return freed

        pacer = gcpace.FullCollections(
            lambda _: quiet,
            pending=lambda: gcpace.MIN_YOUNG,
            collect=collect,
            resident=lambda: int(growth * trio.current_time()),
        )
        with trio.move_on_after(seconds):
            await pacer.run()
        return times

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_collections_that_find_nothing_come_ever_more_rarely_up_to_a_bound() -> None:
    """Issue 62: an aged mount's full collection took 0.7 s and found nothing, every 30 s
    under load.  Each that finds next to nothing doubles the rest before the next, quiet or
    not, up to ``LONGEST_REST``."""
    every, longest = gcpace.FULL_EVERY, gcpace.LONGEST_REST
    busy = _pacer_times(quiet=False, freed=0, seconds=1500)
    assert busy == [every, 2 * every, 4 * every, 8 * every, 16 * every, 32 * every, 48 * every]
    assert all(b - a <= longest for a, b in zip(busy, busy[1:], strict=False))
    first = gcpace.CHECK  # quiet from the start: the first at the first look
    quiet = _pacer_times(quiet=True, freed=gcpace.FEW - 1, seconds=1000)
    assert quiet == [first + d for d in (0, every, 3 * every, 7 * every, 15 * every, 31 * every)]


def test_a_collection_that_finds_garbage_starts_the_rests_over() -> None:
    assert _pacer_times(quiet=False, freed=gcpace.FEW, seconds=100) == [30.0, 60.0, 90.0]
    assert len(_pacer_times(quiet=True, freed=gcpace.FEW, seconds=10.1)) == 20  # every look


def test_memory_grown_since_the_last_collection_waives_the_rest() -> None:
    """A few cycles found can hold big buffers: a process whose resident memory grew by
    ``GROWTH`` since its last full collection does not wait out the rest."""
    growth = gcpace.GROWTH // 20  # GROWTH in 20 s: every 20 s (rounded up to a look)
    quiet = _pacer_times(quiet=True, freed=0, seconds=100, growth=growth)
    assert quiet == [0.5, 21.0, 41.5, 62.0, 82.5]
    busy = _pacer_times(quiet=False, freed=0, seconds=100, growth=growth)
    assert busy == [30.0, 60.0, 90.0]  # under load: every FULL_EVERY, as before the rests
