"""The publication record of an object (issue 64): up to which request of each reader its
exclusive holder has published.

A query another client's exclusive lease refuses (``fsobjects.leases.guarded``) used to
recall the lease: the holder sent what it held back and gave the lease up, so one look at
a directory a writer works in ended its write-back.  A reader may instead ask the holder
to **publish** (``fsobjects/publish.py``).  Its request carries a number of its own, its
*token*: its mount's own count, above every token it used before.  The record,
``lp = [[client, mount, token], ...]``, holds for each reader the highest token the holder
has published up to.  A query that carries a token for an object whose holder published
up to it for that reader is answered from what the servers hold although the exclusive
lease stands: the holder sent everything it held back after that reader asked
(:func:`published_for`).

This module holds the record and the token check only; the methods are in
``fsobjects/publish.py`` (they need the lease records, which need this check).
"""

from __future__ import annotations

from typing import Any

from bftfs.qu.timestamp import MAX_OBJECTS

#: The state key of the record: ``[[client, mount, token], ...]``.
PUB_KEY = "lp"
#: The key of a query envelope's tokens (``leases.tag_query``): ``[[oid, token], ...]``.
TOKENS = "pw"
#: Most tokens one query's envelope carries (one per object of the query).
MAX_TOKENS = MAX_OBJECTS
#: Readers one object's record remembers at most (the oldest entry goes first): a reader
#: dropped so asks again, it is never answered wrongly.
MAX_READERS = 16
#: The largest token (a reader's count is a clock's nanoseconds or less).
MAX_TOKEN = 2**63 - 1

#: A reader: its client id and its mount's number (``leases.who``).
Reader = tuple[int, int]


def is_count(x: Any) -> bool:
    """Whether ``x`` is a non-negative integer no greater than :data:`MAX_TOKEN`."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_TOKEN


def published(state: Any) -> dict[Reader, int]:
    """The record of an object state, reader -> highest token published (``{}``: none;
    malformed entries, and a record of the older ``[asked, published]`` form, are left
    out: their readers ask again)."""
    lp = state.get(PUB_KEY) if isinstance(state, dict) else None
    out: dict[Reader, int] = {}
    for item in lp if isinstance(lp, list) else ():
        if isinstance(item, list) and len(item) == 3 and all(is_count(x) for x in item):
            out[(item[0], item[1])] = item[2]
    return out


def with_published(state: dict[str, Any], upto: dict[Reader, int]) -> None:
    """Raise the record of ``state`` (in place) to ``upto`` for each reader named: never
    backwards, the readers just raised last, :data:`MAX_READERS` at most."""
    record = published(state)
    for reader, token in sorted(upto.items()):
        got = max(record.pop(reader, 0), token)
        record[reader] = got  # (last: the newest survive the bound)
    kept = list(record.items())[-MAX_READERS:]
    state[PUB_KEY] = [[c, m, t] for (c, m), t in kept]


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


def published_for(state: Any, reader: Reader, token: int | None) -> bool:
    """Whether ``reader``'s query with ``token`` may read ``state`` although another client
    holds an exclusive lease on it: the holder published up to the token for that reader.
    A correct reader's new token is above every one it used before, so above what was
    published for it when it asked; an old one reused reads what the servers held then,
    which hurts nobody but the reader."""
    return token is not None and token >= 1 and published(state).get(reader, 0) >= token


def with_wire_tokens(tokens: dict[int, int] | None) -> list[list[int]] | None:
    """Tokens as the envelope carries them (None: none)."""
    if not tokens:
        return None
    return [[oid, n] for oid, n in sorted(tokens.items())][:MAX_TOKENS]
