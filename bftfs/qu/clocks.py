"""Judging the times a client's update declares against a node's clock (issue 31), for
both metadata engines: a Q/U node before it runs the method (``qu/replica.py``), a FaB node
before it holds or accepts a client's request (``node/fab_server.py``).  Methods read no
clock (``qu/objects.py``, ``Method.clocks`` and ``Method.lease_clock``), so this is done
outside them, by each node alone against its own clock: one client cannot claim a time
years ahead and lock others out, or end their leases early."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bftfs.qu.objects import Registry


@dataclass(frozen=True)
class ClockAhead:
    """Result of a client's own update refused because the clock it declares
    (``Registry.declared_time``) lies ``ahead_ns`` past this server's, more than the skew
    allowed (nothing was written)."""

    ahead_ns: int
    #: The skew allowed (0: the PASIS write skew); a negative ``ahead_ns`` is a lease time
    #: too far behind (``Registry.lease_time``).
    skew_ns: int = 0

    @property
    def code(self) -> str:
        """The refusal's code: ``ahead``, or ``behind`` for a lease time too far behind."""
        return "ahead" if self.ahead_ns > 0 else "behind"


def clock_off(
    registry: Registry, method: str, arg: Any, now_ns: int, max_ahead_ns: int
) -> ClockAhead | None:
    """Why update ``method`` with ``arg`` is refused at a node whose clock reads ``now_ns``:
    a declared time more than ``max_ahead_ns`` ahead, or a lease time off by more than its
    skew (behind too for a grant); None: it is not."""
    declared = registry.declared_time(method, arg)
    if declared is not None and declared > now_ns + max_ahead_ns:
        return ClockAhead(declared - now_ns)
    lease = registry.lease_time(method, arg)
    if lease is not None:
        at, skew, grants = lease
        if at > now_ns + skew or (grants and at < now_ns - skew):
            return ClockAhead(at - now_ns, skew)
    return None
