"""How a node stores Q/U state in its key-value store (one module for the disk format).

Named databases (LMDB creates them on demand; :class:`bftfs.kv.MemoryKV` in tests)::

    db        key                      value (canonical msgpack)
    qu.rh     oid (8, BE)              [rh, auth]            the replica history + authenticator
    qu.ver    oid (8) || lt (49)       {"k": kind, "s": state bytes or nil, "ap": applied
                                        bytes, "co": lt_co, "a": answer, "acc": accepted,
                                        "o": [oid...]}       one object version per timestamp
    qu.req    lt (49)                  request body           what made the candidate (for
                                                              inline repair by other clients)
    qu.blob   hash (32)                bytes                  the parts and nested skeletons
                                                              of states and applied tables,
                                                              stored once
    qu.bref   hash (32)                count (4, BE)          skeletons referring to each
                                                              blob
    qu.charge tag (1) || record key    owner (8) || size (8)  who each record is charged to
    qu.usage  owner (8)                total (8)              the sum of an owner's charges
    qu.gone   oid (8, BE)              empty                  an object forgotten here: its
                                                              id is refused for good
    qu.thin   oid (8) || lt (49)       [lt_co, stored_ns]     a version thinned by the
                                                              schedule (``retention.thin_step``):
                                                              the chain steps over it

Every record is charged (``qu.charge``, :data:`bftfs.accounting.QU`) to the principal whose
request wrote it last, with its size as stored (key plus value), in the transaction that
writes it; deleting a record gives its charge back in the transaction that deletes it.  The
tag names the table (``h`` rh, ``v`` ver, ``q`` req, ``b`` blob, ``c`` bref).  Only the
functions here write or delete Q/U records, so no path can skip the accounting; callers pass
the ``owner`` (the request's authenticated sender).  A blob and its count are charged to the
request that first stored it; later references change the count, not the charge (a count
is always 4 bytes).

A state (an applied table, an answer) of :data:`bftfs.qu.blobs.SPLIT_MIN` bytes or more is
stored as a skeleton (``"s"`` with ``"sk"``, ``"ap"`` with ``"ak"``, ``"a"`` with ``"nk"``
(store format 2: a batch's answer, the same in each of its up to 32 objects' versions, was
four fifths of the bytes of their records): the splitter's version, ``true`` for 1) whose
references name blobs of ``qu.blob``: parts (long strings, content-defined runs of a
container's elements) and the nested skeletons of large containers, which refer
to blobs in turn.  A blob's count is the number of stored skeletons (versions' and nested
ones) referring to it: storing a new nested skeleton counts its references, deleting the
last reference to one drops them, so deleting or overwriting a version frees what no other
version reaches.  A version therefore costs its skeleton and the blobs no stored version
had: what its update changed, not the bytes other clients keep in the object (issue 60).
Records of splitter version 1 read as they are (same skeleton format, no nested
references), so a store written before needs no conversion.

Keys are big-endian and timestamps order-preserving, so the versions of one object are one
contiguous key range in logical-time order: "version at LT" is a get and version history is
a scan (DESIGN.md "Version history").  ``acc`` is False for versions obtained by object sync
(this server never accepted that candidate, so it must not answer a repeated request with
it).  ``ap`` is the applied table (``replica.py``).  The seed requires RH, authenticator and
object version to change atomically (L2512-2514): the replica writes all three inside the
one transaction the caller gives it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from bftfs.accounting import QU
from bftfs.kv import KV
from bftfs.qu import blobs
from bftfs.qu.canon import canonical, map_value, pack, unpack
from bftfs.qu.history import (
    INITIAL_RH,
    Authenticator,
    ReplicaHistory,
    auth_from_wire,
    newest,
    rh_from_wire,
    rh_wire,
)
from bftfs.qu.timestamp import TIMESTAMP_SIZE, Timestamp
from bftfs.qu.versionrecord import SchemaError, Version, answer_of, contents

DB_RH = "qu.rh"
DB_VER = "qu.ver"
DB_REQ = "qu.req"
DB_BLOB = "qu.blob"
DB_BREF = "qu.bref"
DB_CHARGE = QU.charges
DB_USAGE = QU.totals
#: Ids of the objects this server forgot (``tombstones.forget_step``): never charged (the
#: object's records were given back; 8 bytes of key per removed object stay).
DB_GONE = "qu.gone"
#: Versions thinned by history's schedule (``retention.thin_step``): what a chain needs to
#: step over them, never charged (about 120 bytes each, gone with the history they bridge).
DB_THIN = "qu.thin"

#: The tag of each table's records in ``qu.charge``.
_TAGS = {DB_RH: b"h", DB_VER: b"v", DB_REQ: b"q", DB_BLOB: b"b", DB_BREF: b"c"}
_TABLES = {tag: db for db, tag in _TAGS.items()}

#: Version kinds.
METHOD, COPY, BARRIER, SYNCED = "method", "copy", "barrier", "synced"

EMPTY_APPLIED = canonical({})


def oid_key(oid: int) -> bytes:
    """The 8-byte key of an object."""
    return oid.to_bytes(8, "big")


def _put(kv: KV, db: str, key: bytes, value: bytes, owner: int | None) -> None:
    """Write a Q/U record charged to ``owner`` (None: to nobody; a charge it had is given
    back)."""
    kv.put(db, key, value)
    if owner is None:
        QU.release(kv, _TAGS[db] + key)
    else:
        QU.recharge(kv, _TAGS[db] + key, owner, len(key) + len(value))


def _delete(kv: KV, db: str, key: bytes) -> bool:
    """Delete a Q/U record and give back its charge; whether it was there."""
    QU.release(kv, _TAGS[db] + key)
    return kv.delete(db, key)


def usage_of(kv: KV, owner: int) -> int:
    """Bytes of Q/U records charged to ``owner`` on this node."""
    return QU.usage_of(kv, owner)


def audit(kv: KV) -> tuple[dict[int, int], int, int]:
    """The per-owner totals recomputed from the charges of records still stored, how many
    charges name a record that is gone, and how many stored records have no charge or one
    of another size (a check for tests and fsck: the totals must equal ``qu.usage``, the
    other two zero)."""

    def present(ckey: bytes) -> bool:
        db = _TABLES.get(ckey[:1])
        return db is not None and kv.get(db, ckey[1:]) is not None

    totals, orphans = QU.audit(kv, present)
    unaccounted = 0
    for db, tag in _TAGS.items():
        for key, value in kv.scan(db, b"", b"\xff" * 128):
            raw = kv.get(DB_CHARGE, tag + bytes(key))
            if raw is None or int.from_bytes(bytes(raw)[8:], "big") != len(key) + len(value):
                unaccounted += 1
    return totals, orphans, unaccounted


#: The largest object id, and a key above every object's (the end of a scan).
MAX_OID = (1 << 64) - 1
OID_END = b"\xff" * 9


def ver_key(oid: int, lt: Timestamp) -> bytes:
    """The key of the version of ``oid`` at ``lt``."""
    return oid_key(oid) + lt.encode()


def load_rh(kv: KV, oid: int) -> tuple[ReplicaHistory, Authenticator | None]:
    """The server's replica history and authenticator of ``oid`` (initial if never touched)."""
    raw = kv.get(DB_RH, oid_key(oid))
    if raw is None:
        return INITIAL_RH, None
    try:
        return load_rh_raw(bytes(raw))
    except SchemaError as e:
        raise SchemaError(f"bad stored replica history of {oid}: {e}") from e


def load_rh_raw(raw: bytes) -> tuple[ReplicaHistory, Authenticator | None]:
    """A stored replica history and authenticator from their stored bytes (cached)."""
    hit = _RH_PARSED.get(raw)
    if hit is not None:
        return hit
    try:
        rh, auth = unpack(raw)
        parsed = rh_from_wire(rh), auth_from_wire(auth, len(auth)) if auth else None
    except (ValueError, TypeError) as e:
        raise SchemaError(str(e)) from e
    _remember_rh(raw, parsed)
    return parsed


def newest_of(kv: KV, oid: int) -> Timestamp:
    """The newest timestamp of this server's history of ``oid`` (the initial candidate's
    if it never touched it), read with :func:`newest_stored`."""
    raw = kv.get(DB_RH, oid_key(oid))
    if raw is None:
        return newest(INITIAL_RH)
    try:
        return Timestamp.decode(newest_stored(bytes(raw)))
    except SchemaError as e:
        raise SchemaError(f"bad stored replica history of {oid}: {e}") from e


def newest_stored(raw: bytes) -> bytes:
    """The newest timestamp (its bytes) of a stored replica history, without parsing its
    candidates: a stored history is canonical, strictly newest first
    (:func:`~bftfs.qu.history.rh_from_wire`), and timestamps order as their encodings do.

    ``qu.latest`` asks it of every object a server holds for each restarted peer, and the
    restarted server of each object listed (``node/qu_catchup.py``): parsing every
    candidate of every history (and making the authenticators of histories stored without
    one) was 30% and 23% of six nodes' CPU in the half minute after a restart of a cluster
    holding a few tens of thousands of objects, and pushed the histories the foreground
    reads out of the parsed cache (``_RH_PARSED``).

    Raises:
        SchemaError: not a stored history, or its candidates not newest first.
    """
    hit = _RH_PARSED.get(raw)
    if hit is not None:
        return newest(hit[0]).encode()
    try:
        rh, _auth = unpack(raw)
        keys = [c[0] for c in rh]
        if not keys or not all(type(k) is bytes for k in keys):
            raise SchemaError("not a replica history of timestamps")
        if not all(map(bytes.__gt__, keys, keys[1:])):
            raise SchemaError("replica history not in canonical order")
        return Timestamp.decode(keys[0]).encode()
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise SchemaError(str(e)) from e


#: Parsed stored histories by their exact bytes: a busy object's history is read in every
#: request.  ``store_rh`` puts what it writes here, so the next request of an object that
#: keeps changing finds its history parsed too.  Bounded; a plain dict because entries are
#: put in from two places (loads and the committer's ``store_rh``), under ``_RH_LOCK`` in
#: case a store ever commits off the event loop's thread; reads need no lock.
_RH_PARSED: dict[bytes, tuple[ReplicaHistory, Authenticator | None]] = {}
_RH_PARSED_MAX = 4096
_RH_LOCK = threading.Lock()


def _remember_rh(raw: bytes, parsed: tuple[ReplicaHistory, Authenticator | None]) -> None:
    with _RH_LOCK:
        if len(_RH_PARSED) >= _RH_PARSED_MAX:
            del _RH_PARSED[next(iter(_RH_PARSED))]  # the oldest entry
        _RH_PARSED[raw] = parsed


def store_rh(
    kv: KV, oid: int, rh: ReplicaHistory, auth: Authenticator, owner: int | None = None
) -> None:
    """Write the replica history and authenticator of ``oid``.

    ``rh`` is canonical (``make_rh``) and ``auth`` a tuple of MACs, so parsing the bytes
    written gives back exactly ``(rh, auth)``: they are remembered as parsed.
    """
    raw = pack([rh_wire(rh), auth])
    _put(kv, DB_RH, oid_key(oid), raw, owner)
    _remember_rh(raw, (rh, tuple(auth)))


def delete_rh(kv: KV, oid: int) -> bool:
    """Remove the replica history of ``oid`` (a forgotten tombstone): the object reads as
    never touched here again (its charge given back); whether there was one."""
    return _delete(kv, DB_RH, oid_key(oid))


def mark_forgotten(kv: KV, oid: int) -> None:
    """Record that ``oid`` was forgotten here: requests naming it are refused for good
    (``replica.handle_request``), so an old handle never names a new object that reuses
    the id (issue 31)."""
    kv.put(DB_GONE, oid_key(oid), b"")


def is_forgotten(kv: KV, oid: int) -> bool:
    """Whether ``oid`` was forgotten here (:func:`mark_forgotten`)."""
    return kv.get(DB_GONE, oid_key(oid)) is not None


def load_contents(kv: KV, oid: int, lt: Timestamp) -> tuple[str, bytes | None, bytes] | None:
    """``(kind, state, applied table)`` of the version of ``oid`` at ``lt``, or None: what
    an update reads of the versions it is conditioned on, without decoding the rest of the
    record (the answer stored with it is a whole batch's, the same in each of its objects).

    Raises:
        SchemaError: the stored record does not parse.
    """
    raw = kv.get(DB_VER, ver_key(oid, lt))
    return None if raw is None else contents(raw, lambda h: _blob(kv, h))


def load_version(kv: KV, oid: int, lt: Timestamp) -> Version | None:
    """The version of ``oid`` at ``lt``, or None."""
    raw = kv.get(DB_VER, ver_key(oid, lt))
    return Version.decode(lt, raw, lambda h: _blob(kv, h)) if raw is not None else None


def version_accepted(kv: KV, oid: int, lt: Timestamp) -> tuple[str, Any] | None:
    """``(kind, answer)`` of the version at ``lt`` if this server accepted it, else None;
    cheaper than :func:`load_version` (the state is not joined)."""
    raw = kv.get(DB_VER, ver_key(oid, lt))
    if raw is None:
        return None
    try:
        d = unpack(raw)
        return (d["k"], answer_of(d, lambda h: _blob(kv, h))) if d["acc"] else None
    except (KeyError, TypeError, ValueError, blobs.BlobError) as e:
        raise SchemaError(f"bad stored version: {e}") from e


def store_version(
    kv: KV, oid: int, v: Version, owner: int | None = None, packed_answer: bytes | None = None
) -> None:
    """Write a version (overwrites; callers only overwrite SYNCED with accepted ones),
    charged to ``owner``.

    A state of ``blobs.SPLIT_MIN`` bytes or more is stored split (:mod:`bftfs.qu.blobs`):
    its skeleton here, its parts in ``qu.blob`` with one count per reference; a part
    already stored (by any version, any sender) only gains a count, so ``owner`` is
    charged for the skeleton and the parts this version is the first to use.
    """
    key = ver_key(oid, v.lt)
    old = kv.get(DB_VER, key)
    if old is not None:
        _release(kv, old)
    parts = blobs.split(v.state) if v.state is not None else None
    table = blobs.split(v.applied)
    said = blobs.split(packed_answer if packed_answer is not None else pack(v.answer))
    for got in (parts, table, said):
        if got is not None:
            _add_references(kv, got, owner)
    skeleton = parts[0] if parts is not None else None
    applied = table[0] if table is not None else None
    answer = said[0] if said is not None else None
    _put(kv, DB_VER, key, v.encode(skeleton, applied, packed_answer, answer), owner)


def _add_references(kv: KV, got: blobs.Split, owner: int | None) -> None:
    """Count the references of a new skeleton: a blob already stored gains one; a new
    one is stored with one, charged to ``owner``, and if it is a nested skeleton its own
    references are counted in turn (so each blob's count is the number of stored
    skeletons - versions' and nested ones - referring to it)."""
    _skeleton, refs, data, kids = got
    todo = list(refs)
    while todo:
        entry = todo.pop()
        h = blobs.ref_hash(entry)
        raw = kv.get(DB_BREF, h)
        if raw is not None:  # same size: the count keeps its charge
            kv.put(DB_BREF, h, (int.from_bytes(bytes(raw), "big") + 1).to_bytes(4, "big"))
            continue
        _put(kv, DB_BLOB, h, data[h], owner)
        _put(kv, DB_BREF, h, (1).to_bytes(4, "big"), owner)
        if blobs.is_nested(entry):
            todo += kids[h]


def _blob(kv: KV, h: bytes) -> bytes | None:
    raw = kv.get(DB_BLOB, h)
    return bytes(raw) if raw is not None else None


def record_references(raw: bytes) -> list[bytes]:
    """The references a stored version record holds, once per reference (its state's,
    its applied table's, then its answer's; ``blobs.ref_hash`` and ``blobs.is_nested`` read them;
    those of nested skeletons are not included).

    Raises:
        SchemaError: the record does not parse.
    """
    try:
        d = unpack(raw)
        refs = blobs.references(d["s"]) if d.get("sk") else []
        if d.get("ak"):
            refs += blobs.references(d["ap"])
        if d.get("nk"):
            refs += blobs.references(d["a"])
        return refs
    except (KeyError, TypeError, ValueError, AttributeError, blobs.BlobError) as e:
        raise SchemaError(f"bad stored version: {e}") from e


def _release(kv: KV, raw: bytes) -> None:
    """Drop the blob references of a stored version value that is being replaced or
    deleted: a blob whose count reaches zero is deleted (its charge given back), and if
    it is a nested skeleton its own references are dropped in turn.

    Raises:
        SchemaError: the record or a nested skeleton does not parse.
    """
    todo = record_references(raw)
    while todo:
        entry = todo.pop()
        h = blobs.ref_hash(entry)
        got = kv.get(DB_BREF, h)
        if got is None:
            continue
        count = int.from_bytes(bytes(got), "big") - 1
        if count > 0:  # same size: the count keeps its charge
            kv.put(DB_BREF, h, count.to_bytes(4, "big"))
            continue
        if blobs.is_nested(entry):
            nested = _blob(kv, h)
            if nested is not None:
                try:
                    todo += blobs.references(nested)
                except blobs.BlobError as e:
                    raise SchemaError(f"bad stored skeleton {h.hex()}: {e}") from e
        _delete(kv, DB_BREF, h)
        _delete(kv, DB_BLOB, h)


def _version_range(oid: int) -> tuple[bytes, bytes]:
    """The ``qu.ver`` keys of ``oid``'s versions: ``start <= key < stop``."""
    stop = (oid + 1).to_bytes(8, "big") if oid + 1 < (1 << 64) else b"\xff" * 9
    return oid_key(oid), stop


def iter_versions(kv: KV, oid: int, *, reverse: bool = False) -> list[Version]:
    """Every stored version of ``oid`` in logical-time order (newest first if ``reverse``)."""
    start, stop = _version_range(oid)
    out = []
    for k, v in kv.scan(DB_VER, start, stop, reverse=reverse):
        if len(k) == 8 + TIMESTAMP_SIZE:
            out.append(Version.decode(Timestamp.decode(k[8:]), v, lambda h: _blob(kv, h)))
    return out


def newest_times(kv: KV, oid: int, k: int) -> list[Timestamp]:
    """The timestamps of the ``k`` newest stored versions of ``oid``, newest first (keys
    only)."""
    start, stop = _version_range(oid)
    out: list[Timestamp] = []
    for key in kv.scan_keys(DB_VER, start, stop, reverse=True):  # each update's retention
        if len(out) == k:
            break
        if len(key) == 8 + TIMESTAMP_SIZE:
            out.append(Timestamp.decode(key[8:]))
    return out


def oldest_version(kv: KV, oid: int) -> tuple[Timestamp, int] | None:
    """``(lt, stored_ns)`` of the oldest stored version of ``oid``, or None (one seek)."""
    got = oldest_versions(kv, oid, 1)
    return got[0] if got else None


def oldest_versions(kv: KV, oid: int, k: int) -> list[tuple[Timestamp, int]]:
    """``(lt, stored_ns)`` of the ``k`` oldest stored versions of ``oid``, oldest first."""
    start, stop = _version_range(oid)
    out: list[tuple[Timestamp, int]] = []
    for key, value in kv.scan(DB_VER, start, stop):
        if len(out) >= k:
            break
        if len(key) != 8 + TIMESTAMP_SIZE:
            continue
        try:
            stored_ns = int(map_value(value, "w", 0))
        except (TypeError, ValueError, AttributeError) as e:
            raise SchemaError(f"bad stored version: {e}") from e
        out.append((Timestamp.decode(key[8:]), stored_ns))
    return out


def versions_newest_first(kv: KV, oid: int) -> Iterator[tuple[Timestamp, int, int | None]]:
    """``(lt, stored_ns, first object)`` of each stored version of ``oid``, newest first,
    read lazily (a caller that stops early reads no further)."""
    start, stop = _version_range(oid)
    for key, value in kv.scan(DB_VER, start, stop, reverse=True):
        if len(key) != 8 + TIMESTAMP_SIZE:
            continue
        try:
            d = unpack(value)
            objects = d.get("o") or ()
            yield (
                Timestamp.decode(key[8:]),
                int(d.get("w", 0)),
                (int(objects[0]) if objects else None),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise SchemaError(f"bad stored version: {e}") from e


def version_heads(kv: KV, oid: int) -> list[tuple[Timestamp, str, Timestamp | None, int]]:
    """``(lt, kind, lt_co, stored_ns)`` of each stored version of ``oid``, oldest first
    (states are not joined)."""
    start, stop = _version_range(oid)
    out = []
    for key, value in kv.scan(DB_VER, start, stop):
        if len(key) != 8 + TIMESTAMP_SIZE:
            continue
        try:
            d = unpack(value)
            co = Timestamp.decode(d["co"]) if d["co"] is not None else None
            out.append((Timestamp.decode(key[8:]), str(d["k"]), co, int(d.get("w", 0))))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SchemaError(f"bad stored version: {e}") from e
    return out


def store_request(kv: KV, lt: Timestamp, body: bytes, owner: int | None = None) -> None:
    """Remember the (culled) request that made candidate ``lt``, charged to ``owner``."""
    _put(kv, DB_REQ, lt.encode(), body, owner)


def delete_request(kv: KV, lt: Timestamp) -> bool:
    """Forget the stored request of ``lt`` (and its charge); whether it was there."""
    return _delete(kv, DB_REQ, lt.encode())


def load_request_packed(kv: KV, lt: Timestamp) -> bytes | None:
    """The stored request body of ``lt`` as stored (packed), or None: a link's proof."""
    raw = kv.get(DB_REQ, lt.encode())
    return bytes(raw) if raw is not None else None


def load_request(kv: KV, lt: Timestamp) -> Any:
    """The stored request body of ``lt`` (parsed msgpack), or None."""
    raw = kv.get(DB_REQ, lt.encode())
    return unpack(raw) if raw is not None else None


def delete_version(kv: KV, oid: int, v: Version) -> None:
    """Remove a version (and the blobs only it used), and the stored request with its first
    object's version."""
    raw = kv.get(DB_VER, ver_key(oid, v.lt))
    if raw is not None:
        _release(kv, raw)
    _delete(kv, DB_VER, ver_key(oid, v.lt))
    if v.objects and v.objects[0] == oid:
        delete_request(kv, v.lt)


def store_thinned(kv: KV, oid: int, lt: Timestamp, lt_co: Timestamp, stored_ns: int) -> None:
    """Record that ``oid``'s version at ``lt`` (conditioned on ``lt_co``, stored at
    ``stored_ns``) was thinned: a chain walk steps over it (``qu.past.versions_step``)."""
    kv.put(DB_THIN, ver_key(oid, lt), pack([lt_co.encode(), stored_ns]))


def load_thinned(kv: KV, oid: int, lt: Timestamp) -> tuple[Timestamp, int] | None:
    """``(lt_co, stored_ns)`` of a thinned version of ``oid`` at ``lt``, or None."""
    raw = kv.get(DB_THIN, ver_key(oid, lt))
    if raw is None:
        return None
    try:
        co, stored_ns = unpack(raw)
        return Timestamp.decode(co), int(stored_ns)
    except (TypeError, ValueError) as e:
        raise SchemaError(f"bad thinned record: {e}") from e


def thinned_records(kv: KV, oid: int) -> list[tuple[Timestamp, Timestamp, int]]:
    """``(lt, lt_co, stored_ns)`` of every thinned record of ``oid``, oldest first."""
    start, stop = _version_range(oid)
    out = []
    for key, value in kv.scan(DB_THIN, start, stop):
        if len(key) == 8 + TIMESTAMP_SIZE:
            try:
                co, stored_ns = unpack(value)
                out.append((Timestamp.decode(key[8:]), Timestamp.decode(co), int(stored_ns)))
            except (TypeError, ValueError) as e:
                raise SchemaError(f"bad thinned record: {e}") from e
    return out


def delete_thinned_below(kv: KV, oid: int, before_ns: int | None = None) -> int:
    """Delete the thinned records of ``oid`` older than every version still stored (all,
    if none is) and stored before ``before_ns`` (None: whenever).  Records between stored
    versions bridge a chain walk and stay; below the oldest they only let a walk reach
    the initial version (the moments before it then read as "did not exist" rather than
    "reclaimed"), which is history until its horizon.  How many went."""
    oldest = oldest_version(kv, oid)
    gone = 0
    for lt, _co, t in thinned_records(kv, oid):
        if oldest is not None and lt >= oldest[0]:
            break
        if before_ns is None or t < before_ns:
            gone += int(kv.delete(DB_THIN, ver_key(oid, lt)))
    return gone
