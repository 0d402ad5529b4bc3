"""The server's set-up of a request (seed Figure 4.3 ``s_setup``, lines 1100-1118): from the
classification of the operated objects (:mod:`bftfs.qu.classify`), the request's type, its
timestamp and the candidate at each object.  Pure: no trio, no clock, no randomness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bftfs.qu.canon import canonical
from bftfs.qu.classify import ObjectClass, OpType, View, classify
from bftfs.qu.timestamp import (
    KIND_BARRIER,
    KIND_COPY,
    KIND_METHOD,
    MAX_TIME,
    ZERO,
    Candidate,
    Timestamp,
    lt_digest,
)


@dataclass(frozen=True)
class Setup:
    """``s_setup`` (lines 1100-1118) for a request over one or more objects.

    ``lt`` is shared by all objects of the request: its Time exceeds every object's latest
    time, so it is a valid next timestamp at each (choice: the seed gives the multi-object
    timestamp no formula; one LT per request makes the candidates of one multi-object update
    identifiable across objects, which deduction relies on).
    """

    type: OpType
    lt: Timestamp
    candidates: Mapping[int, Candidate]  # per object: <LT, LT_CO, objects>
    current: Mapping[int, Timestamp]  # per object: LTcurrent for the currency check
    classes: Mapping[int, ObjectClass]

    def at(self) -> tuple[Timestamp, ...]:
        """The candidates' conditioned-on timestamps, by object id: the versions a reply's
        answer was computed on (``Reply.at``)."""
        return tuple(self.candidates[oid].lt_co for oid in sorted(self.candidates))


def request_type(classes: Mapping[int, ObjectClass]) -> OpType:
    """The type of a (multi-object) request: METHOD only if every object says METHOD, COPY
    if every object says COPY or METHOD (copying a complete latest version forward is
    harmless), else BARRIER."""
    kinds = {c.type for c in classes.values()}
    if kinds == {OpType.METHOD}:
        return OpType.METHOD
    if OpType.BARRIER in kinds:
        return OpType.BARRIER
    return OpType.COPY


def copy_operation(classes: Mapping[int, ObjectClass]) -> bytes:
    """What a copy's timestamp commits to instead of an operation: the copied versions.

    The seed sets ``LT.Operation := LT_CO.Operation`` (line 1115); the copied LT already
    commits to that operation, and naming it directly also covers multi-object copies.
    """
    return canonical(
        [[oid, (c.obj.lt if c.obj else ZERO).encode()] for oid, c in sorted(classes.items())]
    )


def setup(
    view: View,
    client: int,
    operation: bytes | None,
    ohs_digest: bytes,
    objects: tuple[int, ...] | None = None,
) -> Setup | None:
    """``s_setup`` over every object of ``view``.

    Args:
        view: the culled multi-OHS of the request.
        client: the client id that goes into the timestamp.
        operation: canonical bytes of the operation, or None for a repair request (a
            METHOD set-up needs an operation; with None the caller gets the METHOD type
            back and decides what to do).
        ohs_digest: :func:`bftfs.qu.history.multi_ohs_digest` of the culled multi-OHS.
        objects: the objects operated on (default: all of the view; the others are context
            carried only so that deduction can count their servers).

    Returns:
        The set-up, or None when the next Time would pass ``MAX_TIME``.
    """
    ops = view.objects if objects is None else objects
    return setup_from_classes(
        {oid: classify(view, oid) for oid in ops}, client, operation, ohs_digest, ops
    )


def setup_from_classes(
    classes: Mapping[int, ObjectClass],
    client: int,
    operation: bytes | None,
    ohs_digest: bytes,
    ops: tuple[int, ...],
) -> Setup | None:
    """:func:`setup` from the classification of the operated objects ``ops`` (what a server
    may have kept from an earlier request over the same culled multi-OHS)."""
    typ = request_type(classes)
    time = max(c.latest.time for c in classes.values()) + 1
    if time > MAX_TIME:
        return None
    if typ is OpType.METHOD:
        kind, op = KIND_METHOD, operation or b""
    elif typ is OpType.BARRIER:
        kind, op = KIND_BARRIER, b""
    else:
        kind, op = KIND_COPY, copy_operation(classes)
    lt = Timestamp(time, typ is OpType.BARRIER, client, lt_digest(kind, op, ohs_digest))
    cands: dict[int, Candidate] = {}
    current: dict[int, Timestamp] = {}
    for oid, cl in classes.items():
        lt_co = cl.obj.lt if cl.obj is not None else ZERO
        cands[oid] = Candidate(lt, lt_co, tuple(ops))
        if typ is OpType.METHOD:
            current[oid] = lt_co
        elif typ is OpType.BARRIER:
            current[oid] = lt
        else:
            current[oid] = cl.bar.lt if cl.type is OpType.COPY and cl.bar else lt_co
    return Setup(typ, lt, cands, current, dict(classes))
