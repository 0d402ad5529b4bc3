"""The Q/U reply message (layout in ``messages.py``): one server's answer to a request or
a history read, its wire value and its parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bftfs.qu.canon import CanonicalError, canonical
from bftfs.qu.history import (
    Authenticator,
    HistoryError,
    OHSEntry,
    auth_from_wire,
    rh_from_wire,
    rh_wire,
)
from bftfs.qu.messages import MAX_VALUE, MessageError, ReplyStatus, parse_lt, parse_uint
from bftfs.qu.timestamp import MAX_OBJECTS, Timestamp

#: ReplyStatus by wire value (a dict lookup; calling the enum costs several times more).
_STATUS = {s.value: s for s in ReplyStatus}


@dataclass(frozen=True)
class Reply:
    """One server's answer to a request (lines 1008, 1021, 1030) or a history read."""

    status: ReplyStatus
    type: str | None = None  # the OpType value performed, for OK replies to requests
    lt: Timestamp | None = None  # the accepted candidate's LT (updates, barriers, copies)
    answer: Any = None
    at: tuple[Timestamp, ...] | None = None  # versions a query answer was computed on
    hist: tuple[OHSEntry, ...] = ()  # the server's <RH, alpha> per object of the request
    culled: tuple[tuple[int, ...], ...] = ()  # per object: servers whose RH was culled
    why: str = ""
    need: tuple[int, ...] = ()
    #: ``canonical(answer)`` when parsed from the wire (checked for size there anyway);
    #: the client compares answers by it instead of encoding each one again.
    answer_key: bytes | None = field(default=None, compare=False, repr=False)
    #: The node's signature of :func:`signed_statement` (a method of the cross-group
    #: commit, ``Method.txn``), or None.
    sig: bytes | None = None

    def key(self) -> bytes:
        """The canonical bytes of the answer (equal answers, equal keys)."""
        k = self.answer_key
        return k if k is not None else canonical(self.answer)

    def wire(self) -> dict:
        """The message body."""
        return {
            "st": self.status.value,
            "t": self.type,
            "lt": self.lt.encode() if self.lt else None,
            "a": self.answer,
            "at": [t.encode() for t in self.at] if self.at is not None else None,
            "h": [[rh_wire(x.rh), x.auth or None] for x in self.hist],
            "x": [list(c) for c in self.culled],
            "why": self.why,
            "n": list(self.need),
            **({"sg": self.sig} if self.sig is not None else {}),
        }

    @classmethod
    def from_wire(cls, v: Any, objects: tuple[int, ...], n: int) -> Reply:
        """Parse a reply to a request over ``objects``.

        Raises:
            MessageError: malformed, or histories not one per object.
        """
        if not isinstance(v, dict):
            raise MessageError("reply must be a map")
        st = v.get("st")
        status = _STATUS.get(st) if isinstance(st, str) else None
        if status is None:
            raise MessageError("bad status")
        typ = v.get("t")
        if typ not in (None, "method", "copy", "barrier"):
            raise MessageError("bad type")
        lt = parse_lt(v["lt"]) if v.get("lt") is not None else None
        at_raw = v.get("at")
        if at_raw is not None and (not isinstance(at_raw, list) or len(at_raw) != len(objects)):
            raise MessageError("bad answer versions")
        at = tuple(parse_lt(x) for x in at_raw) if at_raw is not None else None
        h = v.get("h")
        if not isinstance(h, list) or len(h) != len(objects):
            raise MessageError("need one history per object")
        hist: list[OHSEntry] = []
        try:
            for item in h:
                if not isinstance(item, list) or len(item) != 2:
                    raise MessageError("history must be [rh, auth]")
                auth: Authenticator | None = auth_from_wire(item[1], n)
                hist.append(OHSEntry(rh_from_wire(item[0]), auth))
        except HistoryError as e:
            raise MessageError(str(e)) from e
        x = v.get("x", [])
        if not isinstance(x, list) or len(x) not in (0, len(objects)):
            raise MessageError("bad culled list")
        culled = tuple(
            tuple(parse_uint(s, "server", 16) for s in c) if isinstance(c, list) else () for c in x
        )
        need_raw = v.get("n", [])
        if not isinstance(need_raw, list) or len(need_raw) > 8 * MAX_OBJECTS:
            raise MessageError("bad need list")
        why = v.get("why", "")
        if not isinstance(why, str):
            raise MessageError("bad reason")
        try:
            answer_key = canonical(v.get("a"))
        except CanonicalError as e:
            raise MessageError(f"answer: {e}") from e
        if len(answer_key) > MAX_VALUE:
            raise MessageError("answer too large")
        sig = v.get("sg")
        if sig is not None and (not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE):
            raise MessageError("bad signature")
        return cls(
            status,
            typ,
            lt,
            v.get("a"),
            at,
            tuple(hist),
            culled,
            why[:200],
            tuple(parse_uint(o, "object id") for o in need_raw),
            answer_key,
            sig,
        )


#: A node's signature of a statement (``fsobjects/txnsign.py``: XEdDSA, 64 bytes).
SIGNATURE_SIZE = 64
#: What a signed statement starts with: no other signed document of bftfs begins so.
STATEMENT_DOMAIN = "bftfs-qu-signed-v1"


def signed_statement(method: str, objects: tuple[int, ...], lt: Timestamp, answer: Any) -> bytes:
    """What a node signs when it accepts candidate ``lt`` of an update ``method`` on
    ``objects`` that answered ``answer``: the canonical bytes of all four.  The answer of
    every correct node accepting that candidate is the same (methods are deterministic),
    so ``q`` such signatures show the candidate established (docs/layout.md)."""
    return canonical([STATEMENT_DOMAIN, method, list(objects), lt.encode(), answer])
