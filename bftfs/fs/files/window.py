"""A sequential reader's read-ahead window over one open file, and its largest size sized
from the links (the fetches that fill it are :meth:`bftfs.fs.files.fetch.Fetcher.read_ahead`).

**The largest size** (issue 65): a read-ahead window keeps the links busy only if the
bytes in flight cover a round trip at the links' rate, the bandwidth-delay product.  A
window is refilled a group at a time once a group is due (``fetch.refill_group``), and a
group's frame travels whole, so what is in flight dips below the window: :data:`GAIN`
times the product keeps at least one product in flight.  The rate and round come from
the connections (``net/rtt.bandwidth_delay``: the rate big replies arrive at, the
shortest round trip, over the ``m`` nodes a read takes fragments from).  A LAN's product
is tens of kilobytes, 25 ms one-way at 50 Mbit/s a link about 2 MB: both keep the
configured largest size (8 MiB), the floor; 100 ms at 200 Mbit/s (75 MB/s of data, 0.2
s) asks for 30 MB.  Never above the ceiling (:data:`DEFAULT_READAHEAD_CEILING`: the
blocks a reading file may hold in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

#: The window's largest size over the bandwidth-delay product (module docstring).
GAIN = 2.0
#: The most the measured sizing may raise a file's read-ahead window to (bytes).
DEFAULT_READAHEAD_CEILING = 64 * 1024 * 1024


def readahead_largest(rate: float, round_s: float, floor: int, ceiling: int) -> int:
    """The read-ahead window's largest size for links carrying ``rate`` bytes/s of data in
    ``round_s`` seconds a round: :data:`GAIN` times their product, at least ``floor`` (also
    before anything is measured) and at most ``ceiling`` (below ``floor``: the floor)."""
    if rate <= 0 or round_s <= 0:
        return floor
    return int(min(max(floor, GAIN * rate * round_s), max(floor, ceiling)))


@dataclass
class ReadWindow:
    """The window's current size in bytes, the next block index not yet asked for, block
    index -> the event its background fetch sets, and the epoch a fetch must still find to
    keep what it read (bumped by :meth:`restart`: a write, a flush, another version)."""

    size: int = 0
    next_block: int = 0
    inflight: dict[int, trio.Event] = field(default_factory=dict)
    epoch: int = 0

    def restart(self) -> None:
        """Fetches in flight keep nothing they read; the window grows again from the
        next read."""
        self.epoch += 1
        self.size = 0
        self.next_block = 0
