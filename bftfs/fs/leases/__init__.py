"""This mount's leases (issue 33): the objects it may answer queries on without a round,
and what it does when the nodes recall one.  The wing's face: other code imports from
here only.

- ``mount.py``: :class:`Leases`, what the file system calls, composed of the parts below
  (its module docstring: what a lease buys, its time on two clocks, a recall);
- ``holdings.py``: :class:`Holdings`, the leases held, on both clocks, and those that
  came with a create or a mkdir;
- ``taking.py``: :class:`Taker`, when a lease is asked for, taking and renewing them;
- ``sessions.py``: :class:`Sessions`, the mount's lease sessions (issue 62) that its
  shared leases are bound to, and :func:`recall_with_sessions`, a requester's recall;
- ``recalls.py``: :class:`Recalls`, the nodes' recall pushes, letting leases go;
- ``votes.py``: :class:`RecallVotes`, a recall believed from ``b + 1`` nodes;
- ``releases.py``: :class:`Releases`, giving leases back after the kernel forgot them;
- ``answers.py``: :class:`LeasedAnswers`, the answers and listings the leases keep good.
"""

from bftfs.fs.leases.answers import LeasedAnswers, made_entries
from bftfs.fs.leases.mount import Leases
from bftfs.fs.leases.releases import BATCH, Releases, Spawn
from bftfs.fs.leases.sessions import recall_with_sessions
from bftfs.fs.leases.taking import FILE_USES

__all__ = [
    "BATCH",
    "FILE_USES",
    "LeasedAnswers",
    "Leases",
    "Releases",
    "Spawn",
    "made_entries",
    "recall_with_sessions",
]
