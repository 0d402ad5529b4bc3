"""How fast a node's catch-up goes and when it should end, from its progress record alone.

A restarted node's catch-ups (``qu_catchup.py``, ``rw_catchup.py``) keep plain counters in
``node.progress``; an operator waiting for one wants a rate and a time left, and so does a
dashboard.  Both ``bftfs status`` and the node's metrics compute them here, the same way,
from what the ``stats`` reply already carries, so a status command run once (no earlier
sample to compare with) still says how long is left: the rate is the pass's average
(items checked over the pass's ``seconds``), which is steady enough for a catch-up of
hundreds of items and needs no state kept anywhere.

What counts as checked, out of what total:

- ``qu.catchup``: the objects its scan found behind (``behind``), each ending ``done``,
  ``skipped`` or ``failed`` (those failing once are tried again at the end of the pass and
  counted then, so the figure lags a little while they wait);
- ``rw.catchup``: the blocks its listing merge proposed (``candidates``), each ending
  ``current`` (read, found up to date), ``done``, ``skipped`` or ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The counters each catch-up's items end in, and the counter that is their total.
_CHECKED = {
    "qu.catchup": (("done", "skipped", "failed"), "behind"),
    "rw.catchup": (("current", "done", "skipped", "failed"), "candidates"),
}


@dataclass(frozen=True)
class Pace:
    """One catch-up's progress: ``checked`` of ``total`` items, ``rate`` items per second
    (None before the first one), ``eta`` seconds left while it runs (None otherwise)."""

    state: str
    checked: int
    total: int
    rate: float | None
    eta: float | None
    #: Block data read per second (``rw.catchup``'s ``bytes_read``; None for the others).
    bytes_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "checked": self.checked,
            "total": self.total,
            "rate_per_s": None if self.rate is None else round(self.rate, 3),
            "eta_s": None if self.eta is None else round(self.eta, 1),
            "bytes_per_s": None if self.bytes_rate is None else round(self.bytes_rate),
        }


def pace(name: str, progress: Mapping[str, Any]) -> Pace:
    """The pace of catch-up ``name`` (``qu.catchup`` or ``rw.catchup``) from its record."""
    ends, total_key = _CHECKED.get(name, (("done", "skipped", "failed"), "behind"))
    checked = sum(int(progress.get(k, 0) or 0) for k in ends)
    total = max(int(progress.get(total_key, 0) or 0), checked)
    state = str(progress.get("state", "?"))
    seconds = float(progress.get("seconds", 0.0) or 0.0)
    rate = checked / seconds if checked and seconds > 0 else None
    eta = None
    if state == "running" and rate:
        eta = (total - checked) / rate
    read = progress.get("bytes_read")
    bytes_rate = read / seconds if isinstance(read, int) and seconds > 0 else None
    return Pace(state, checked, total, rate, eta, bytes_rate)


def catch_ups(progress: Mapping[str, Any]) -> dict[str, Pace]:
    """The pace of every catch-up in a node's ``progress`` (``stats``), by protocol
    (``qu``, ``rw``)."""
    return {
        name.split(".")[0]: pace(name, p)
        for name, p in sorted(progress.items())
        if name.endswith(".catchup") and isinstance(p, Mapping)
    }
