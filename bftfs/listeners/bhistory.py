"""A node's retained versions of block registers (docs/listeners.md "Blocks on four nodes").

A register holds one value.  File history (``bftfs log``, ``.snapshots``, ``cat --at``)
needs the versions a block had, so a node keeps each value a block register's STORE
supersedes in database :data:`DB`, under the register's name and the value's stamp (16
bytes, big-endian: key order is stamp order), charged to the value's writer
(``accounting.LR``) as the register itself is.  ``[retention]`` bounds them as it bounds
PASIS versions: the thinning schedule (``bftfs/thinning.py``; an empty block, a file's
removal, is not solid) and ``keep_versions`` newest, applied at the block's next write and
by :func:`sweep` every :data:`SWEEP_SECONDS`.

``bl.past`` answers the newest value (current or retained) whose Time is at or below the
moment asked (``listeners/blockregs.py``).  A node only keeps what it stored: a value a
node stored was vouched for by a quorum (S3), so a retained value is one that was written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from bftfs import accounting
from bftfs.listeners import blockregs
from bftfs.listeners.stamps import INITIAL_VALUE, Stamp, Stored
from bftfs.net.server import HandlerError
from bftfs.policy import RetentionPolicy
from bftfs.thinning import kept

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

DB = "blisteners.history"
#: Seconds between sweeps of the whole history (blocks not written again are thinned too).
SWEEP_SECONDS = 60.0


@dataclass(frozen=True)
class Keeper:
    """What a thinning keeps: the cluster's ``[retention]`` at moment ``now_ns`` (taken
    before the transaction, which must be deterministic in the KV)."""

    retention: RetentionPolicy
    now_ns: int


def _stamp_bytes(stamp: Stamp) -> bytes:
    return stamp.counter.to_bytes(8, "big") + stamp.writer.to_bytes(8, "big")


def _record(value: Stored) -> bytes:
    return msgpack.packb([*value.stamp, value.data], use_bin_type=True)


def _value(raw: bytes) -> Stored:
    counter, writer, data = msgpack.unpackb(raw)
    return Stored(Stamp(counter, writer), data)


def _range(key: bytes) -> tuple[bytes, bytes]:
    return key, key + b"\xff" * 17


def versions(kv: Any, key: bytes) -> list[tuple[bytes, Stored]]:
    """Register ``key``'s retained values, oldest first, with their history keys."""
    return [(k, _value(raw)) for k, raw in kv.scan(DB, *_range(key))]


def retain(kv: Any, key: bytes, old: Stored, keeper: Keeper) -> None:
    """Keep ``old``, the value a STORE of block register ``key`` supersedes, then thin."""
    if old.stamp == INITIAL_VALUE.stamp:
        return  # the initial empty value: nothing was written
    hkey = key + _stamp_bytes(old.stamp)
    record = _record(old)
    kv.put(DB, hkey, record)
    accounting.LR.recharge(kv, b"h" + hkey, old.stamp.writer, len(hkey) + len(record))
    thin(kv, key, keeper)


def thin(kv: Any, key: bytes, keeper: Keeper) -> int:
    """Drop the retained values of ``key`` the schedule no longer keeps, except the
    ``keep_versions - 1`` newest (the current value is the newest version); how many."""
    held = versions(kv, key)
    times = [blockregs.time_of(v.data) for _k, v in held]
    solid = [len(blockregs.block_of(v.data)) > 0 for _k, v in held]
    keep = set(kept(times, keeper.now_ns, keeper.retention.schedule(), solid=solid))
    newest = max(0, keeper.retention.keep_versions - 1)
    keep.update(range(max(0, len(held) - newest), len(held)))
    dropped = 0
    for i, (hkey, _v) in enumerate(held):
        if i not in keep:
            kv.delete(DB, hkey)
            accounting.LR.release(kv, b"h" + hkey)
            dropped += 1
    return dropped


def as_of(kv: Any, key: bytes, time_ns: int, current: Stored | None) -> Stored:
    """The newest of ``key``'s values (``current`` and retained) with Time at or below
    ``time_ns``; the initial value if none is."""
    candidates = [v for _k, v in versions(kv, key)]
    if current is not None:
        candidates.append(current)
    fit = [v for v in candidates if blockregs.time_of(v.data) <= time_ns]
    return max(fit) if fit else INITIAL_VALUE


def sweep(kv: Any, keeper: Keeper) -> int:
    """:func:`thin` every block register with history; how many values it dropped."""
    keys = sorted({k[:-16] for k in kv.scan_keys(DB, b"", b"\xff" * 40)})
    return sum(thin(kv, key, keeper) for key in keys)


def register(node: Node, current: Callable[[bytes], Stored | None]) -> None:
    """Serve ``bl.past`` on ``node`` (``current``: a register's value now) and sweep."""

    async def on_past(ctx: RequestContext, payload: Any) -> Any:
        try:
            key, t = blockregs.parse_past_request(payload)
        except ValueError as e:
            raise HandlerError("bad_request", str(e)) from None
        if not blockregs.is_block(key):
            raise HandlerError("bad_request", "only block registers keep history")
        now = current(key)
        return blockregs.past_reply(node.store.read(lambda kv: as_of(kv, key, t, now)))

    async def sweeping() -> None:
        while True:
            await trio.sleep(SWEEP_SECONDS)
            await node.store.write(
                functools.partial(sweep, keeper=Keeper(node.config.retention, node.now_ns())),
                background=True,
            )

    node.register(blockregs.KIND_PAST, on_past, inline=True)
    node.spawn(sweeping)
