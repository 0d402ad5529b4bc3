"""File blocks held in Byzantine Listeners registers: names, values, history's wire forms.

A cluster too small for PASIS (``ClusterConfig.blocks == "registers"``: FaB metadata on
``3b + 1`` nodes, docs/listeners.md "Blocks on four nodes") keeps block ``B`` in the
register named :data:`~bftfs.listeners.messages.BLOCK_PREFIX` + ``B``'s 16 bytes.  Its
value is the block's Time (8 bytes, big-endian nanoseconds) and the block's bytes: the
register orders the writes, the Time places each version in history.  The initial value
``b""`` is the empty block at Time 0.

History: ``bl.past`` asks a node for the newest value of a block register it holds (its
current one, or one it retained: ``listeners/bhistory.py``) with Time at or below a moment;
:func:`pick` takes, among the answers, the newest value ``f + 1`` nodes report identically
(one of them is correct: the value was written).

==============  ===========================  =====================================
kind            request                      reply
==============  ===========================  =====================================
``bl.past``     ``{"k": name, "t": time}``   ``{"s": ts, "d": value}`` (``s`` =
                                             the initial stamp, ``d`` = ``b""``:
                                             none at or before ``t``)
==============  ===========================  =====================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bftfs.listeners import messages as m
from bftfs.listeners.stamps import Stored

KIND_PAST = "bl.past"
#: Bytes of a value's Time.
TIME_SIZE = 8


def name(block: int) -> bytes:
    """The register of block ``block`` (a 128-bit block id)."""
    return m.BLOCK_PREFIX + block.to_bytes(16, "big")


def is_block(key: bytes) -> bool:
    """Whether register ``key`` holds a block (and keeps history)."""
    return key.startswith(m.BLOCK_PREFIX) and len(key) == len(m.BLOCK_PREFIX) + 16


def pack(time_ns: int, data: bytes | bytearray | memoryview) -> bytes:
    """A block register's value: Time, then the block."""
    return time_ns.to_bytes(TIME_SIZE, "big") + bytes(data)


def time_of(value: bytes) -> int:
    """The Time of a block register's value (0: the initial empty value, or no Time)."""
    return int.from_bytes(value[:TIME_SIZE], "big") if len(value) >= TIME_SIZE else 0


def block_of(value: bytes) -> bytes:
    """The block a register's value holds (the initial value: the empty block)."""
    return value[TIME_SIZE:]


def past_request(key: bytes, time_ns: int) -> dict[str, Any]:
    return {"k": key, "t": time_ns}


def parse_past_request(raw: object) -> tuple[bytes, int]:
    if not isinstance(raw, dict):
        raise ValueError("a bl.past request is a map")
    key = m.parse_ts_request(raw)
    t = raw.get("t")
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < 1 << 64:
        raise ValueError("a moment is an unsigned 64-bit count of nanoseconds")
    return key, t


def past_reply(value: Stored) -> dict[str, Any]:
    return {"s": value.stamp.wire(), "d": value.data}


def parse_past_reply(raw: object) -> Stored:
    _rid, value = m.parse_value({**raw, "r": 0} if isinstance(raw, dict) else raw)
    return value


def pick(answers: Iterable[Stored], f: int, *, everyone: bool = False) -> Stored | None:
    """The newest value at least ``f + 1`` answers report identically, once no answer
    reports a newer one or ``everyone`` answered; None until then.

    A correct node can lack a version: it missed the write, and its catch-up sent only a
    later value.  As of that version's moment it reports an older value (the empty one
    if it held nothing older), and a liar that reports the same makes ``f + 1`` identical
    answers for it while the true version is one answer away: the block read as zeros
    (``t4_four_nodes``, under load).  A newer answer is waited for until everyone
    answered: a complete write is held by a quorum, so by ``f + 1`` correct nodes, and a
    newer value only one node reports then is a lie, or no complete write."""
    answers = list(answers)
    counts = Counter(answers)
    vouched = [v for v, c in counts.items() if c >= f + 1]
    if not vouched:
        return None
    best = max(vouched)
    if not everyone and any(v > best for v in answers):
        return None
    return best
