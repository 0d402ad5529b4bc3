"""Tier 1: scheduled snapshots' names and thinning (``bftfs/autosnap.py``): the newest of
each of the last hours, days and weeks is kept, the newest always, hand-named snapshots
never touched; times are injected."""

from __future__ import annotations

from bftfs.autosnap import PREFIX, auto_name, to_delete
from bftfs.fsobjects import valid_snapshot_name
from bftfs.thinning import DAY_NS, HOUR_NS

#: Monday 2025-11-24 00:00 UTC (weeks begin on Monday).
T0 = 1_763_942_400 * 10**9


def hourly_for(days: int, start: int = T0) -> dict[str, int]:
    """A scheduled snapshot at 5 past every hour for ``days`` days."""
    out = {}
    for h in range(days * 24):
        t = start + h * HOUR_NS + 300 * 10**9
        out[auto_name(t)] = t
    return out


def test_names_are_valid_snapshot_names_ordered_by_time() -> None:
    a, b = auto_name(T0), auto_name(T0 + 10**9)
    assert a == "auto-20251124T000000Z" and a < b
    assert valid_snapshot_name(a) and a.startswith(PREFIX)


def test_the_newest_of_each_hour_day_and_week_is_kept_and_hand_named_ones_never_go() -> None:
    snaps = hourly_for(10)
    snaps["release-1"] = T0 + 5 * HOUR_NS  # by hand: never deleted
    now = max(snaps.values())
    gone = set(to_delete(snaps, now, hourly=24, daily=7, weekly=4))
    kept = {n for n in snaps if n not in gone}
    assert "release-1" in kept
    auto_kept = sorted(snaps[n] for n in kept if n.startswith(PREFIX))
    # The last 24 hours' 24 snapshots (the newest of each hour), then one a day for the
    # days before (the newest of each day: 23:05), back 7 days, and the weeks' newest.
    recent = [t for t in auto_kept if t > now - 24 * HOUR_NS]
    assert len(recent) == 24
    older = [t for t in auto_kept if t <= now - 24 * HOUR_NS]
    assert older and all((t - T0) % DAY_NS == 23 * HOUR_NS + 300 * 10**9 for t in older)
    # Seven days of days (the oldest one within them is week 1's end, Sunday's last).
    assert [(t - T0) // DAY_NS for t in older] == [3, 4, 5, 6, 7, 8]
    assert len(gone) == len(snaps) - 1 - len(auto_kept)


def test_with_nothing_to_keep_only_the_newest_stays() -> None:
    snaps = hourly_for(2)
    gone = to_delete(snaps, max(snaps.values()), hourly=0, daily=0, weekly=0)
    assert sorted(set(snaps) - set(gone)) == [max(snaps, key=lambda n: snaps[n])]
    assert gone == sorted(gone, key=lambda n: snaps[n])  # oldest first
    assert to_delete({"mine": T0}, T0, hourly=0, daily=0, weekly=0) == []


def test_past_the_days_one_a_week_is_kept_for_the_weeks_asked() -> None:
    snaps = hourly_for(35)  # five weeks, Monday to Sunday
    now = max(snaps.values())
    gone = set(to_delete(snaps, now, hourly=24, daily=7, weekly=4))
    weeks = sorted(
        (snaps[n] - T0) // DAY_NS for n in snaps if n not in gone and snaps[n] <= now - 7 * DAY_NS
    )
    assert weeks == [13, 20, 27]  # the Sundays (weeks' last snapshots) of weeks 2 to 4
