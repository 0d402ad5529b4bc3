"""What garbage collection of one block deletes (seed L1540-1542, spec A.11's "For our FS";
issue 36): below a version verified complete, keeping what the retention policy and its
thinning schedule keep.  Pure, no I/O, times passed in; the store steps that apply it are
in ``bftfs/rw/collect.py``, the retention a node short of space applies is
:func:`bftfs.rw.lazy.squeezed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bftfs.policy import RetentionPolicy
from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.thinning import kept_until


@dataclass(frozen=True)
class GcPlan:
    """What garbage collection of one block may delete (:func:`gc_plan`)."""

    #: Every version strictly below it may go (rw.floor).
    floor: Timestamp
    #: Versions at or above the floor and below the verified version that the thinning
    #: schedule lets go (holes in history, remembered in rw.thinned), descending.
    thinned: tuple[Timestamp, ...] = ()
    #: When the next of the versions kept only by the schedule may go (ns; 0: none).
    revisit_ns: int = 0


def gc_plan(
    verified: Timestamp,
    hosted: Sequence[Timestamp],
    now_ns: int,
    retention: RetentionPolicy,
    *,
    pressure: bool = False,
    pins: Sequence[int] = (),
    solid: Sequence[bool] | None = None,
) -> GcPlan:
    """What to collect of ``hosted`` (descending), given a verified-complete version.

    Only versions below ``verified`` are ever garbage (L1540-1542): it and everything above
    stay, so reads of the present never miss what they need.  Below it the block keeps
    its newest ``keep_versions`` versions, the version current at each snapshot moment in
    ``pins`` (the newest with Time at or before it: a file's version at the moment reads
    its blocks as of its ``bt``, at most that Time) and, unless the node is short of space
    (``pressure``), what the thinning schedule keeps (:func:`bftfs.thinning.kept_until`
    over the versions' Times, which every node sees alike; ``solid``: per version,
    whether it is not empty).  The oldest kept version is the floor; versions above it
    that nothing keeps are ``thinned``.
    """
    keep: set[int] = set(range(min(retention.keep_versions, len(hosted))))
    for t in pins:
        i = next((i for i, ts in enumerate(hosted) if ts.time <= t), None)
        if i is not None:
            keep.add(i)
    scheduled: set[int] = set()
    untils: list[int] = []
    if not pressure:
        untils = kept_until([ts.time for ts in hosted], retention.schedule(), solid=solid)
        scheduled = {i for i, u in enumerate(untils) if now_ns < u}
    below = [i for i, ts in enumerate(hosted) if ts < verified]
    kept_below = [i for i in below if i in keep or i in scheduled]
    if not kept_below:
        return GcPlan(verified if verified > ZERO else ZERO)
    floor = min(verified, hosted[max(kept_below)])
    thinned = tuple(hosted[i] for i in below if hosted[i] > floor and i not in keep | scheduled)
    revisit = min((untils[i] for i in kept_below if i not in keep), default=0)
    return GcPlan(floor if floor > ZERO else ZERO, thinned, revisit)
