"""The transport's exceptions, in one place so every layer of ``bftfs.net`` can raise them
without importing the others.

A per-request problem the caller can act on (no answer, a refusal) is an exception here;
a bad frame is a :class:`FrameError` that the connection counts and drops, never something
a peer can use to stop a task.
"""

from __future__ import annotations


class TransportError(Exception):
    """A node could not be reached, or did not answer in time."""


class RemoteError(Exception):
    """The remote handler refused the request (``HandlerError`` on the node)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class OversizedRequest(RemoteError):
    """A request larger than a frame the node reads: refused here and never sent.  The
    node would hang up at its length and a resend on a new connection would do the same,
    each copy sealed anew: a Q/U request carrying 1 555 link proofs (several MB) kept a
    mount at a full core for as long as it lived (two PostMarks in one directory, stop 89).
    It is the node's refusal of a malformed request, given without the round."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__("bad-request", f"a request of {size} bytes is over the limit ({limit})")


class FrameError(Exception):
    """A frame was rejected; ``reason`` is the counter it is recorded under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


def refusal_code(reason: str) -> str | None:
    """The node's refusal code in a quorum call's failure reason (``"refused: CODE: ..."``,
    as the endpoint and the batcher record a ``RemoteError``), or None for other failures."""
    if not reason.startswith("refused: "):
        return None
    code, sep, _ = reason[len("refused: ") :].partition(": ")
    return code if sep else None
