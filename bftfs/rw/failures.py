"""What the PASIS client raises: the outcome family (``bftfs.outcome``) and nothing else.

The client's parts (``rw/write.py``, ``rw/read.py``) call the transport, which fails with
``QuorumUnavailable`` or ``TransportError``, and run blocks in nurseries, which fail with
exception groups.  The file system above must not know either (docs/architecture.md, the
import rule), so each public method is wrapped by :func:`outcomes`: a transport failure
becomes the method's own :class:`~bftfs.outcome.ClusterUnavailable` subclass, or
:class:`~bftfs.outcome.StorageFull` when more than ``b`` nodes refused for space.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bftfs.net.errors import TransportError, refusal_code
from bftfs.net.quorum import QuorumUnavailable
from bftfs.outcome import (
    ClusterUnavailable,
    GenerationMoved,
    StorageFull,
    collapse,
    refused_as_moved,
    refused_for_space,
)


class ReadAborted(ClusterUnavailable):
    """A read restarted ``max_restarts`` times (garbage collection kept racing with it)."""


class ReadFailed(ClusterUnavailable):
    """Too few nodes answered validly for a read to decide (more than ``t`` faulty)."""


class HistoryReclaimed(ReadFailed):
    """A read of a block's past found that more than ``b`` nodes have collected below the
    asked time (retention let that version go): at least one benign node vouches for it."""


class WriteFailed(ClusterUnavailable):
    """Fewer than ``N - t`` nodes acknowledged a write (or told its time): it may or may
    not complete later."""


TRANSPORT = (QuorumUnavailable, TransportError)


def storage_full(e: BaseException, b: int) -> StorageFull | GenerationMoved | None:
    """:class:`StorageFull` when a failed quorum call (or any in a group) was refused as
    ``full`` or ``quota`` by more than ``b`` nodes - one of them correct - else None
    (:class:`QuotaExceeded` when ``quota`` refusals are at least as many as ``full``);
    :class:`GenerationMoved` when it was refused ``moved`` or ``retired`` so (the nodes'
    generation is frozen: docs/membership.md, "Generations")."""
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            got = storage_full(sub, b)
            if got is not None:
                return got
        return None
    if isinstance(e, StorageFull | GenerationMoved):
        return e
    if not isinstance(e, QuorumUnavailable):
        return None
    codes: dict[int, str | None] = {int(n): refusal_code(why) for n, why in e.result.errors.items()}
    return refused_for_space(codes, b) or refused_as_moved(codes, b)


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def outcomes(make: type[ClusterUnavailable]) -> Callable[[_F], _F]:
    """Let a public method raise only the outcome family (``bftfs.outcome``): transport
    errors become ``make``, a nursery's group of them its first.  The method's object has
    the thresholds as ``th`` (``b`` decides what counts as a refusal for space)."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except TRANSPORT as e:
                full = storage_full(e, args[0].th.b)
                if full is not None:
                    raise full from e
                raise make(f"{type(e).__name__}: {e}") from e
            except BaseExceptionGroup as g:
                full = storage_full(g, args[0].th.b)
                if full is not None:
                    raise full from g
                out = collapse(g, make, TRANSPORT)
                if out is g:
                    raise
                raise out from g

        return wrapper  # type: ignore[return-value]

    return wrap
