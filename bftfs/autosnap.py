"""Scheduled snapshots (issue 36): ``bftfs snapshot auto``, run by a timer, takes one and
thins the earlier ones (pure: names and the choice; the CLI does the calls).

A snapshot pins its moment for as long as it exists (``docs/history.md``), beyond what
``[retention]`` keeps of every version; ZFS auto-snapshots and restic's ``forget`` keep the
newest snapshot of each of the last hours, days and weeks.  ``snapshot auto`` does the
same with the snapshots it made itself, named :data:`PREFIX` and their UTC minute: one per
hour for ``hourly`` hours, per day for ``daily`` days, per week for ``weekly`` weeks
(the :mod:`bftfs.thinning` rule with no ``keep_seconds`` of its own), and always the
newest.  Snapshots named by hand are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from bftfs.thinning import Schedule, kept

#: The name every scheduled snapshot starts with.
PREFIX = "auto-"
#: Default counts: a day of hours, a week of days, no weeks (``--keep-weekly`` asks for
#: them).  A snapshot older than history's horizon keeps the versions current at its
#: moment and, of every Q/U version after it, a thinned record of about 120 bytes that
#: bridges the chain walk to it (docs/history.md).
DEFAULT_HOURLY = 24
DEFAULT_DAILY = 7
DEFAULT_WEEKLY = 0


def auto_name(now_ns: int) -> str:
    """The name of a scheduled snapshot taken at ``now_ns``: ``auto-YYYYmmddTHHMMSSZ``."""
    return PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ns // 10**9))


def to_delete(
    snapshots: Mapping[str, int],
    now_ns: int,
    *,
    hourly: int = DEFAULT_HOURLY,
    daily: int = DEFAULT_DAILY,
    weekly: int = DEFAULT_WEEKLY,
) -> list[str]:
    """The scheduled snapshots (name -> moment, ns) the schedule no longer keeps at
    ``now_ns``, oldest first; the newest scheduled one is always kept, and snapshots not
    named :data:`PREFIX`... are never among them."""
    auto = sorted((t, n) for n, t in snapshots.items() if n.startswith(PREFIX))
    if not auto:
        return []
    times = [t for t, _ in auto]
    keep = kept(times, now_ns, Schedule(keep_ns=0, hourly=hourly, daily=daily, weekly=weekly))
    return [n for i, (_, n) in enumerate(auto) if i not in keep and i != len(auto) - 1]
