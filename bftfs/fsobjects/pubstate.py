"""The publication record of an object (issue 64): how many publications readers asked of
its exclusive holder and how many the holder made.

A query another client's exclusive lease refuses (``fsobjects.leases.guarded``) used to
recall the lease: the holder sent what it held back and gave the lease up, so one look at
a directory a writer works in ended its write-back.  A reader may instead ask the holder
to **publish** (``fsobjects/publish.py``): ``lp = [asked, published]`` counts the
requests (each reader's request gets the next number, its *token*) and the highest one
the holder has published up to.  A query that carries a token for an object the holder
has published up to is answered from what the servers hold although the exclusive lease
stands: the holder sent everything it held back after that reader asked
(:func:`published_for`).

This module holds the record and the token check only; the methods are in
``fsobjects/publish.py`` (they need the lease records, which need this check).
"""

from __future__ import annotations

from typing import Any

from bftfs.qu.timestamp import MAX_OBJECTS

#: The state key of the record: ``[asked, published]``.
PUB_KEY = "lp"
#: The key of a query envelope's tokens (``leases.tag_query``): ``[[oid, token], ...]``.
TOKENS = "pw"
#: Most tokens one query's envelope carries (one per object of the query).
MAX_TOKENS = MAX_OBJECTS


def counts(state: Any) -> tuple[int, int]:
    """``(asked, published)`` of an object state (``(0, 0)``: no record, or a malformed
    one)."""
    lp = state.get(PUB_KEY) if isinstance(state, dict) else None
    if (
        isinstance(lp, list)
        and len(lp) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in lp)
    ):
        return lp[0], lp[1]
    return 0, 0


def query_tokens(arg: Any) -> dict[int, int]:
    """The tokens a query's envelope carries, object -> token (``{}``: none; malformed
    entries are left out: the query is then refused as one without them)."""
    got = arg.get(TOKENS) if isinstance(arg, dict) else None
    if not isinstance(got, list) or len(got) > MAX_TOKENS:
        return {}
    out: dict[int, int] = {}
    for item in got:
        if (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            out[item[0]] = item[1]
    return out


def published_for(state: Any, token: int | None) -> bool:
    """Whether a query with ``token`` may read ``state`` although another client holds an
    exclusive lease on it: the holder published up to the token.  A token is a number a
    request of the reader's was given, so a correct reader's is always above what was
    published when it asked; an old one reused reads what the servers hold, which hurts
    nobody but the reader."""
    return token is not None and token >= 1 and counts(state)[1] >= token


def with_wire_tokens(tokens: dict[int, int] | None) -> list[list[int]] | None:
    """Tokens as the envelope carries them (None: none)."""
    if not tokens:
        return None
    return [[oid, n] for oid, n in sorted(tokens.items())][:MAX_TOKENS]
