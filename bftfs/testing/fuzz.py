"""Wire fuzzing of a real node process (issue 18): a node must never crash, hang or grow
without bound on what a peer sends, and must keep serving.

:func:`fuzz` sends seeded frames of every kind the transport can be handed, over real TCP:

- requests under a valid session (the fuzzer holds a configured client's key) whose
  payloads are hostile - the kind's real field names with hostile values (huge, negative
  or maximal integers, maximal timestamps, oversized bytes, deep nesting, wrong types), or
  hostile values outright - for every request kind a node serves and some it does not;
- frames with a valid MAC but a body that is not a request (garbage, wrong shapes), replayed
  sequence numbers, frames with a bad MAC, truncated frames, oversized length prefixes, and
  garbage before the handshake.

Replies are read and dropped; the connection is opened again whenever the node closes it
(as it must after a framing error).  :class:`Report` says what was sent.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel

from bftfs.crypto import KeyRing
from bftfs.ids import PrincipalId
from bftfs.net.errors import TransportError
from bftfs.net.frames import DEFAULT_MAX_FRAME, FrameReader, pack
from bftfs.net.session import Session, client_handshake

#: Request kinds a node serves, and some it does not.
KINDS = (
    "ping",
    "stats",
    "qu.request",
    "qu.history",
    "qu.fetch",
    "qu.sync",
    "qu.latest",
    "rw.time",
    "rw.write",
    "rw.read_latest",
    "rw.read_prev",
    "rw.batch",
    "rw.list",
    "rw.notify",
    "rw.space",
    "rw.hold",
    "no.such.kind",
)

#: The field names each kind's body uses (fuzzed with hostile values).
FIELDS = {
    "qu.request": ("v", "c", "o", "h", "op", "e", "x", "lk"),
    "qu.history": ("v", "o"),
    "qu.fetch": ("v", "lt"),
    "qu.sync": ("v", "oid", "lt"),
    "qu.latest": ("v", "after", "limit"),
    "rw.time": ("b",),
    "rw.write": ("b", "ts", "cc", "f", "fr"),
    "rw.read_latest": ("b", "d", "h"),
    "rw.read_prev": ("b", "ts", "d", "h"),
    "rw.batch": ("i",),
    "rw.list": ("after", "limit"),
    "rw.notify": ("v", "e"),
    "rw.space": ("v",),
    "rw.hold": ("v",),
}

INTS = (0, 1, -1, 2**31, 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1, 255, 65536)


@dataclass
class Report:
    """What one fuzzing run sent and how the node reacted."""

    frames: int = 0
    connections: int = 0
    replies: int = 0
    sent: Counter[str] = field(default_factory=Counter)


def hostile(rng: random.Random, depth: int = 0) -> Any:
    """A hostile msgpack-able value."""
    pick = rng.randrange(12 if depth < 6 else 8)
    if pick == 0:
        return rng.choice(INTS)
    if pick == 1:
        return rng.randrange(-(2**63), 2**64)
    if pick == 2:
        return rng.randbytes(rng.choice((0, 1, 16, 32, 48, 49, 50, 100)))
    if pick == 3:
        return bytes(49) if rng.random() < 0.5 else b"\xff" * 49  # timestamp-sized
    if pick == 4:
        return rng.choice(("", "x" * 300, "qu.request", "\u0000", "é" * 10))
    if pick == 5:
        return rng.choice((None, True, False))
    if pick == 6:
        return rng.random() * 1e300
    if pick == 7:
        return rng.randbytes(rng.choice((1 << 16, 1 << 20)))  # large
    if pick in (8, 9):
        return [hostile(rng, depth + 1) for _ in range(rng.randrange(6))]
    if pick == 10:
        return {
            rng.choice(("v", "o", "h", "b", "ts", rng.randbytes(3).hex())): hostile(rng, depth + 1)
            for _ in range(rng.randrange(5))
        }
    return _deep(rng.randrange(20, 120))


def _deep(levels: int) -> Any:
    out: Any = 1
    for _ in range(levels):
        out = [out]
    return out


def payload(kind: str, rng: random.Random) -> Any:
    """A request body for ``kind``: its own field names with hostile values, or hostile."""
    names = FIELDS.get(kind)
    if names is None or rng.random() < 0.3:
        return hostile(rng)
    body: dict[str, Any] = {}
    for name in names:
        if rng.random() < 0.85:
            body[name] = hostile(rng) if rng.random() < 0.6 else rng.choice(INTS[:4])
    if "v" in names and rng.random() < 0.7:
        body["v"] = 1
    return body


class _Connection:
    """One authenticated connection to the node (reopened by the caller when it breaks)."""

    def __init__(self, stream: trio.SocketStream, session: Session) -> None:
        self.stream = stream
        self.session = session
        self.req_id = 0


async def fuzz(
    host: str,
    port: int,
    node: int,
    ring: KeyRing,
    *,
    frames: int,
    seed: int,
    on_reply: Callable[[], None] | None = None,
) -> Report:
    """Send ``frames`` seeded hostile frames to node ``node`` at ``host:port`` as the
    client whose keys ``ring`` holds; what was sent."""
    rng = random.Random(seed)
    report = Report()
    conn: _Connection | None = None

    async def drain(stream: trio.SocketStream) -> None:
        reader = FrameReader(stream, DEFAULT_MAX_FRAME)
        try:
            while await reader.read() is not None:
                report.replies += 1
                if on_reply is not None:
                    on_reply()
        except Exception:  # noqa: BLE001 - whatever the node does to the stream ends it
            return

    async with trio.open_nursery() as nursery:
        for _ in range(frames):
            if rng.random() < 0.01:  # garbage before any handshake, on a connection of its own
                await _garbage_connection(host, port, rng)
                report.sent["pre-handshake garbage"] += 1
                report.frames += 1
                continue
            if conn is None:
                conn = await _connect(host, port, node, ring)
                report.connections += 1
                nursery.start_soon(drain, conn.stream)
            what, data, closes = _frame(rng, conn, ring)
            report.sent[what] += 1
            report.frames += 1
            try:
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                closes = True
            if closes:
                await conn.stream.aclose()
                conn = None
            if report.frames % 64 == 0:
                await trio.lowlevel.checkpoint()  # let the drains run
        if conn is not None:
            await conn.stream.aclose()
        nursery.cancel_scope.cancel()
    return report


async def _connect(host: str, port: int, node: int, ring: KeyRing) -> _Connection:
    for _ in range(50):
        stream = await trio.open_tcp_stream(host, port)
        try:
            session = await client_handshake(
                stream, FrameReader(stream, DEFAULT_MAX_FRAME), ring, PrincipalId(node)
            )
            return _Connection(stream, session)
        except (TransportError, trio.BrokenResourceError, OSError):
            await stream.aclose()
    raise TransportError(f"node {node} refuses every handshake")


async def _garbage_connection(host: str, port: int, rng: random.Random) -> None:
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(rng.randbytes(rng.randrange(1, 400)))
    except (trio.BrokenResourceError, OSError):
        pass
    finally:
        await stream.aclose()


def _frame(
    rng: random.Random, conn: _Connection, ring: KeyRing
) -> tuple[str, bytes | bytearray, bool]:
    """One hostile frame on ``conn``: (what it is, its bytes, whether to close after)."""
    s = conn.session
    r = rng.random()
    if r < 0.70:  # a request under the session, with a hostile payload
        kind = rng.choice(KINDS)
        conn.req_id += 1
        req_id = conn.req_id if rng.random() < 0.9 else rng.choice(INTS)
        try:
            return f"request {kind}", s.seal([0, req_id, kind, payload(kind, rng)]), False
        except (TypeError, ValueError, OverflowError):  # not even msgpack-able: garbage
            return "unpackable", s.seal([0, req_id, kind, None]), False
    if r < 0.78:  # authenticated and encrypted, but not a request
        body = rng.choice(
            (
                rng.randbytes(rng.randrange(1, 200)),
                pack([]),
                pack([1, 5, "ok", None]),  # a "reply" sent to a node
                pack([0, 1, 42, None]),  # kind not a string
                pack({"type": 0}),
                pack([0, 1, "ping"]),  # one field short
            )
        )
        return "valid-mac garbage", s.seal_body(body), False
    if r < 0.83:  # replayed sequence number: a frame sent twice (the node hangs up)
        again = s.seal([0, 1, "ping", None])
        return "replay", again + again, True
    if r < 0.90:  # bad MAC: a sealed frame with one byte flipped (dropped, not fatal)
        flipped = bytearray(s.seal([0, 7, "ping", None]))
        flipped[rng.randrange(4, len(flipped))] ^= 0x40
        s.send_seq -= 1  # never accepted: the next frame may use its number
        return "bad MAC", bytes(flipped), False
    if r < 0.95:  # truncated frame, then close
        whole = s.seal([0, 1, "ping", None])
        return "truncated", whole[: rng.randrange(1, len(whole))], True
    # oversized length prefix
    return "oversized", struct.pack(">I", DEFAULT_MAX_FRAME * 4) + rng.randbytes(64), True
