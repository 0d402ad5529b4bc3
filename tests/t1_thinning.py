"""Tier 1: the thinning schedule of ``[retention]`` (bftfs/thinning.py, issue 36).

The schedule is checked against an oracle written another way (calendar periods from
``datetime``, each version's fate decided by looking at its neighbours), over seeded sets
of version times, and on a hand-made week whose answer is written out; plus the
``[retention]`` table's keys: an old table still loads, a bad value is refused by name.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from bftfs.policy import PolicyError, RetentionPolicy, retention_from
from bftfs.thinning import DAY_NS, HOUR_NS, WEEK_NS, Schedule, kept

MIN_NS = 60 * 10**9
#: A Monday 00:00 UTC (2026-11-23), so that the hand-made cases' periods are easy to see.
MONDAY = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp()) * 10**9


def _period(t_ns: int, unit: str) -> tuple[int, ...]:
    d = datetime.fromtimestamp(t_ns // 10**9, UTC)
    if unit == "hour":
        return (d.year, d.month, d.day, d.hour)
    if unit == "day":
        return (d.year, d.month, d.day)
    iso = d.isocalendar()  # ISO weeks begin on Monday
    return (iso.year, iso.week)


def oracle(times: list[int], now: int, s: Schedule, solid: list[bool]) -> set[int]:
    """restic's rule, spelled out: a version is kept when it is young enough, or when no
    solid version is newer in its calendar hour/day/week and that period's newest lies
    within the tier's count of periods."""
    out = set()
    for i, t in enumerate(times):
        if now - t <= s.keep_ns:
            out.add(i)
            continue
        if not solid[i]:
            continue
        for unit, count, length in (
            ("hour", s.hourly, HOUR_NS),
            ("day", s.daily, DAY_NS),
            ("week", s.weekly, WEEK_NS),
        ):
            same = [
                j for j, u in enumerate(times) if solid[j] and _period(u, unit) == _period(t, unit)
            ]
            newest = max(times[j] for j in same)
            last = max(j for j in same if times[j] == newest)
            if t == newest and last == i and now - t < count * length:
                out.add(i)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_the_schedule_keeps_exactly_what_the_oracle_says(seed: int) -> None:
    rng = random.Random(seed)
    now = MONDAY + 30 * DAY_NS + rng.randrange(DAY_NS)
    s = Schedule(rng.choice([0, 900, 3600]) * 10**9, rng.randint(0, 72), rng.randint(0, 10))
    s = Schedule(s.keep_ns, s.hourly, s.daily, rng.randint(0, 6))
    # Bursts of edits, quiet hours and days, some versions empty, over five weeks.
    times = sorted(now - rng.randrange(35 * DAY_NS) for _ in range(rng.randint(1, 300)))
    times += [now - rng.randrange(2 * HOUR_NS) for _ in range(20)]
    solid = [rng.random() > 0.1 for _ in times]
    assert kept(times, now, s, solid=solid) == oracle(times, now, s, solid)


def test_a_week_of_edits_keeps_the_hours_and_days_the_schedule_names() -> None:
    """Edits every 10 minutes for a week (Monday to Sunday); now is Monday 00:05 after it.
    Every version of the last 15 minutes, the last of each of the last 48 hours and the
    last of each of the last 3 days are kept, nothing else."""
    times = [MONDAY + k * 10 * MIN_NS for k in range(7 * 24 * 6)]
    now = MONDAY + WEEK_NS + 5 * MIN_NS
    s = Schedule(900 * 10**9, hourly=48, daily=3)
    got = {times[i] for i in kept(times, now, s)}
    young = {t for t in times if now - t <= 900 * 10**9}
    assert young == {MONDAY + WEEK_NS - 10 * MIN_NS}  # Sunday 23:50
    hourly = {MONDAY + WEEK_NS - h * HOUR_NS - 10 * MIN_NS for h in range(48)}
    # Saturday, Friday and Thursday's last versions: 23:50 of each (Saturday's and
    # Sunday's are among the hours already); Wednesday's is 4 days old, too old.
    daily = {MONDAY + WEEK_NS - d * DAY_NS - 10 * MIN_NS for d in range(3)}
    assert got == young | hourly | daily
    assert len(got) == 48 + 1  # Friday 23:50 is the only day not inside the 48 hours


def test_removing_a_file_never_makes_its_contents_lose_their_day() -> None:
    """The empty version that gives a removed file's blocks back is not solid: the day's
    last contents stay for the day (and the empty version itself only for keep_seconds)."""
    content, removal = MONDAY + 10 * HOUR_NS, MONDAY + 11 * HOUR_NS
    now = MONDAY + 3 * DAY_NS
    s = Schedule(900 * 10**9, hourly=0, daily=7)
    assert kept([content, removal], now, s, solid=[True, False]) == {0}
    assert kept([content, removal], now, s) == {1}  # were it solid, the removal would win


def test_nothing_is_kept_beyond_the_horizon() -> None:
    s = Schedule(900 * 10**9, hourly=48, daily=7, weekly=2)
    assert s.horizon_ns == 2 * WEEK_NS
    t = MONDAY
    assert kept([t], t + 2 * WEEK_NS - 1, s) == {0}
    assert kept([t], t + 2 * WEEK_NS, s) == frozenset()


def test_the_default_policy_keeps_a_week_of_history() -> None:
    p = RetentionPolicy()
    assert (p.keep_seconds, p.keep_hourly, p.keep_daily, p.keep_weekly) == (900.0, 48, 7, 0)
    assert p.horizon_seconds == 7 * 86400


def test_a_table_written_before_the_schedule_still_loads() -> None:
    """Only keep_seconds (and the other old keys): its meaning stays, the schedule's
    defaults come on top; tiers at 0 give the old behaviour back."""
    old = retention_from({"keep_seconds": 900.0, "keep_versions": 2, "forget_seconds": 900.0})
    assert old == RetentionPolicy()
    assert retention_from({"keep_seconds": 60}).keep_seconds == 60.0
    bare = retention_from({"keep_seconds": 900.0, "keep_hourly": 0, "keep_daily": 0})
    assert bare.horizon_seconds == 900.0


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"keep_hourly": -1}, "keep_hourly"),
        ({"keep_daily": 100000}, "keep_daily"),
        ({"keep_weekly": 1.5}, "keep_weekly"),
        ({"keep_daily": "7d"}, "keep_daily"),
        ({"keep_monthly": 3}, "keep_monthly"),
    ],
)
def test_a_wrong_schedule_value_is_refused_by_name(table: dict[str, object], named: str) -> None:
    with pytest.raises(PolicyError, match=named):
        retention_from(table)
