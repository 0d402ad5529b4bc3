"""This mount's leases (issue 33): the objects it may answer queries on without a round,
and what it does when the nodes recall one.  The wing's face: other code imports from
here only.

- ``mount.py``: :class:`Leases`, what the file system calls (module docstring: when a
  lease is taken, its time on two clocks, a recall);
- ``answers.py``: :class:`LeasedAnswers`, the answers and listings the leases keep good;
- ``votes.py``: :class:`RecallVotes`, a recall believed from ``b + 1`` nodes;
- ``releases.py``: :class:`Releases`, giving leases back after the kernel forgot them.
"""

from bftfs.fs.leases.answers import LeasedAnswers, made_entries
from bftfs.fs.leases.mount import FILE_USES, Leases
from bftfs.fs.leases.releases import BATCH, Releases

__all__ = ["BATCH", "FILE_USES", "LeasedAnswers", "Leases", "Releases", "made_entries"]
