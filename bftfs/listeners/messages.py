"""The wire forms of Listeners' messages and their checks.

Requests (a client to a node, each answered by the node's reply):

==============  ==============================  =========================================
kind            request                         reply
==============  ==============================  =========================================
``lr.ts``       ``{"k": key}``                  ``{"s": stamp}`` (QUERY TS / TS, W2-W4)
``lr.store``    ``{"k": key, "s": stamp,        ``{"s": stamp}`` (STORE / ACK, W10-W12)
                "d": data}``
``lr.read``     ``{"k": key, "r": read_id}``    ``{"r": read_id, "s": stamp, "d": data}``
                                                (READ / the first VALUE, R2-R4)
``lr.done``     ``{"r": read_id}``              ``{}`` (READ COMPLETE, R14)
==============  ==============================  =========================================

Echoes (a node's later VALUEs for an open read, R4 "possibly several answers per node")
are pushes (``Server.push``) ``{"lr": {"r": read_id, "s": stamp, "d": data}}``.  A stamp
is ``[counter, writer]`` (:class:`~bftfs.listeners.stamps.Stamp`).  Every parser raises
ValueError on a malformed message: a node refuses the request, a client drops the answer
(a faulty node's, counted as no answer).
"""

from __future__ import annotations

from typing import Any

from bftfs.config.model import MAX_BLOCK_SIZE
from bftfs.listeners.stamps import Stamp, Stored

KIND_TS = "lr.ts"
KIND_STORE = "lr.store"
KIND_READ = "lr.read"
KIND_DONE = "lr.done"
KINDS = (KIND_TS, KIND_STORE, KIND_READ, KIND_DONE)
#: The key of an echo push.
PUSH = "lr"
#: Largest register name and value a node takes.
MAX_KEY = 256
MAX_DATA = 64 * 1024
#: Registers named with this prefix hold file blocks (``listeners/blockregs.py``): a
#: block's Time and its bytes, up to the largest block plus its seal.
BLOCK_PREFIX = b"blk:"
MAX_BLOCK_DATA = MAX_BLOCK_SIZE + 64


def cap_of(key: bytes) -> int:
    """The largest value register ``key`` may hold."""
    return MAX_BLOCK_DATA if key.startswith(BLOCK_PREFIX) else MAX_DATA


def _dict(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("a Listeners message is a map")
    return raw


def _key(raw: dict[str, Any]) -> bytes:
    key = raw.get("k")
    if not isinstance(key, bytes) or not 0 < len(key) <= MAX_KEY:
        raise ValueError(f"a register name is 1..{MAX_KEY} bytes")
    return key


def _data(raw: dict[str, Any], cap: int) -> bytes:
    data = raw.get("d")
    if not isinstance(data, bytes) or len(data) > cap:
        raise ValueError(f"a register value is at most {cap} bytes")
    return data


def _read_id(raw: dict[str, Any]) -> int:
    rid = raw.get("r")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 1 << 63:
        raise ValueError("a read id is a non-negative 63-bit integer")
    return rid


def ts_request(key: bytes) -> dict[str, Any]:
    return {"k": key}


def parse_ts_request(raw: object) -> bytes:
    return _key(_dict(raw))


def stamp_reply(stamp: Stamp) -> dict[str, Any]:
    """The answer to ``lr.ts`` and ``lr.store``."""
    return {"s": stamp.wire()}


def parse_stamp_reply(raw: object) -> Stamp:
    return Stamp.from_wire(_dict(raw).get("s"))


def store_request(key: bytes, value: Stored) -> dict[str, Any]:
    return {"k": key, "s": value.stamp.wire(), "d": value.data}


def parse_store_request(raw: object) -> tuple[bytes, Stored]:
    d = _dict(raw)
    key = _key(d)
    return key, Stored(Stamp.from_wire(d.get("s")), _data(d, cap_of(key)))


def read_request(key: bytes, read_id: int) -> dict[str, Any]:
    return {"k": key, "r": read_id}


def parse_read_request(raw: object) -> tuple[bytes, int]:
    d = _dict(raw)
    return _key(d), _read_id(d)


def value_message(read_id: int, value: Stored) -> dict[str, Any]:
    """A VALUE: the reply to ``lr.read`` and the body of an echo."""
    return {"r": read_id, "s": value.stamp.wire(), "d": value.data}


def parse_value(raw: object) -> tuple[int, Stored]:
    """A VALUE (its register is the read's: a block register's may be the larger)."""
    d = _dict(raw)
    return _read_id(d), Stored(Stamp.from_wire(d.get("s")), _data(d, MAX_BLOCK_DATA))


def echo_push(read_id: int, value: Stored) -> dict[str, Any]:
    return {PUSH: value_message(read_id, value)}


def done_request(read_id: int) -> dict[str, Any]:
    return {"r": read_id}


def parse_done_request(raw: object) -> int:
    return _read_id(_dict(raw))
