"""The thinning schedule of ``[retention]`` (issue 36): which old versions history keeps.

Every version younger than ``keep_seconds`` is kept; beyond that, one version per hour for
``keep_hourly`` hours, one per day for ``keep_daily`` days and one per week for
``keep_weekly`` weeks (restic's ``forget --keep-within/--keep-hourly/--keep-daily/
--keep-weekly``, ZFS auto-snapshots' frequent/hourly/daily/weekly).  The version kept for a
period is the newest one written in it, which is the version current at the period's end:
every hour's, day's or week's closing moment (UTC; weeks begin on Monday) reads back whole
for as long as that period is kept.

The rule is one number per version, :func:`kept_until`: the moment after which the schedule
no longer keeps it.  A version written at ``t`` is kept until ``t + keep_seconds`` (plus one
nanosecond: "younger than" is inclusive); if it is the newest of its hour, until ``t +
keep_hourly`` hours, and so on; the largest applies.  Being the newest of a period depends
only on the versions, not on the clock, so thinning never has to look again at a version
it kept until its ``kept_until`` passes, and nodes that hold the same versions keep the
same ones whatever their clocks say, except within clock skew of a ``kept_until``.

Pure: no clock is read here; callers pass ``now``.  What the protocols need (the newest
complete version, Q/U candidates, snapshots' versions) is kept by the callers on top of
this schedule, which only thins history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
WEEK_NS = 7 * DAY_NS
#: 1970-01-01 was a Thursday: shifting by three days makes weeks begin on Monday.
_WEEK_SHIFT_NS = 3 * DAY_NS


@dataclass(frozen=True)
class Schedule:
    """How long history is kept, in nanoseconds and period counts (see the module
    docstring); :func:`bftfs.policy.RetentionPolicy.schedule` builds it."""

    keep_ns: int
    hourly: int = 0
    daily: int = 0
    weekly: int = 0

    @property
    def horizon_ns(self) -> int:
        """How long after it was written a version may still be kept: nothing older than
        this is history any more."""
        return max(self.keep_ns, self.hourly * HOUR_NS, self.daily * DAY_NS, self.weekly * WEEK_NS)

    def tiers(self) -> tuple[tuple[int, int, int], ...]:
        """``(period ns, shift ns, how long the newest of a period is kept)`` per tier in
        use."""
        out = []
        for period, shift, count in (
            (HOUR_NS, 0, self.hourly),
            (DAY_NS, 0, self.daily),
            (WEEK_NS, _WEEK_SHIFT_NS, self.weekly),
        ):
            if count > 0:
                out.append((period, shift, count * period))
        return tuple(out)


def kept_until(
    times: Sequence[int], schedule: Schedule, *, solid: Sequence[bool] | None = None
) -> list[int]:
    """For each version time (ns, any order; equal times are one version each), the moment
    from which the schedule no longer keeps it: kept at ``now`` exactly when ``now <
    kept_until``.

    ``solid``: per version, whether it may stand for its period.  A version that is not
    solid (a block's empty version that gives a removed file's contents back) is kept only
    for ``keep_seconds`` and never displaces the newest solid version of its period:
    otherwise removing a file would, an hour later, leave its hour with nothing but the
    removal, and the contents it had are what a user restores.
    """
    if solid is None:
        solid = [True] * len(times)
    out = [t + schedule.keep_ns + 1 for t in times]
    for period, shift, span in schedule.tiers():
        newest: dict[int, int] = {}  # period number -> index of its newest solid version
        for i, t in enumerate(times):
            if not solid[i]:
                continue
            p = (t + shift) // period
            j = newest.get(p)
            if j is None or t >= times[j]:
                newest[p] = i
        for i in newest.values():
            out[i] = max(out[i], times[i] + span)
    return out


def kept(
    times: Sequence[int],
    now_ns: int,
    schedule: Schedule,
    *,
    solid: Sequence[bool] | None = None,
) -> frozenset[int]:
    """The indices of ``times`` the schedule keeps at ``now_ns`` (:func:`kept_until`)."""
    return frozenset(
        i for i, until in enumerate(kept_until(times, schedule, solid=solid)) if now_ns < until
    )
