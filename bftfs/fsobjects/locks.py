"""File locks as Q/U state (issue 37): ``fcntl`` byte-range locks and ``flock`` locks that
every mount sees.

Each file has a **lock object** beside its attribute object, with the id
:func:`lock_object` (the file's id with the top bit set: no file or directory is ever given
such an id, ``limits.MAX_OID``).  Its state is ``{"k": "l", "h": [entry, ...]}``, every
entry ``[client, mount, domain, owner, start, end, kind, expiry]``:

- ``client``: the principal id of the request that took it (the Q/U timestamp's writer,
  which nodes authenticate), never an argument: no client takes or drops a lock in another
  client's name;
- ``mount``: a random number of the mount that took it (argument ``m``), so two mounts of
  one client identity neither share locks nor drop each other's;
- ``domain``: :data:`POSIX` (``fcntl``, POSIX and open-file-description locks) or
  :data:`FLOCK` (``flock``): on Linux the two kinds never conflict with each other;
- ``owner``: the kernel's lock owner, a 64-bit number (a process's open files for POSIX
  locks, the open file for OFD and ``flock`` locks): the holder is (client, mount, domain,
  owner);
- ``start``..``end``: the bytes held, both inclusive (``end`` = :data:`OFFSET_MAX`: to the
  end of the file, however long it grows);
- ``kind``: :data:`READ` (shared) or :data:`WRITE` (exclusive);
- ``expiry``: the lease the entry lives under (ns).  Every lock update of a mount renews
  all its entries on the object to ``lt + term``; an entry whose expiry passed is gone
  for everyone (:func:`_tidy`), so a holder that died, is cut off or is Byzantine keeps a
  lock at most one term (:data:`MAX_LOCK_TERM`).  Lease times are checked by the nodes
  against their clocks as for leases (``fsobjects.leases``: ``LEASE_SKEW``).

The range algebra is POSIX's (:func:`apply`): a new lock of a holder replaces whatever
the holder held in its range (an unlock is a lock of kind :data:`UNLOCK`), splitting a
longer range in two, and ranges of one holder and kind that overlap or touch are merged.
A conflict (:func:`conflicting`) is a live entry of another holder in the same domain
over an overlapping range, one of the two exclusive.  Every correct node runs the same
check, so a conflicting lock is refused (``conflict``) by every correct node: two clients
never hold overlapping exclusive locks while a quorum of nodes is correct.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from bftfs.fsobjects.leases import MAX_TERM
from bftfs.fsobjects.limits import MAX_OID, MAX_TIME, MIN_TIME
from bftfs.fsobjects.state import check_arg, check_int
from bftfs.qu.objects import MethodRefused, States

#: The top bit of a lock object's id (a file's id is at most ``MAX_OID`` = 2**63 - 1).
LOCK_SPACE = 1 << 63
#: The last byte a lock can cover (the kernel's ``OFFSET_MAX``): "to the end of the file".
OFFSET_MAX = (1 << 63) - 1
#: Lock kinds (the values are ours; the FUSE layer maps ``F_RDLCK``/``F_WRLCK``/``F_UNLCK``).
UNLOCK = 0
READ = 1
WRITE = 2
#: Lock domains: ``fcntl`` locks and ``flock`` locks do not conflict with each other.
POSIX = 0
FLOCK = 1
#: Longest lease a lock lives under (ns); the mount renews it well before.
MAX_LOCK_TERM = MAX_TERM
#: Most entries one lock object keeps; a lock past it is refused ``no-locks`` (ENOLCK).
MAX_LOCKS = 256
#: Kernel lock owners are 64-bit.
MAX_OWNER = (1 << 64) - 1
#: The argument key of the caller's lease time (as ``fsobjects.leases.LEASE_TIME``).
LOCK_TIME = "lt"
#: How long a waiter's registration (``fs.lkwait``) stands (ns); a waiter asks again well
#: before (``fs/locks.py``).
WAIT_TERM = 10 * 10**9
#: Most waiters one lock object records (more are not recorded: they poll).
MAX_WAITERS = 32

#: Who holds a lock: (client, mount, domain, owner).
Holder = tuple[int, int, int, int]


class Lock(NamedTuple):
    """One entry of a lock object (module docstring)."""

    client: int
    mount: int
    domain: int
    owner: int
    start: int
    end: int
    kind: int
    expiry: int

    def holder(self) -> Holder:
        """Whose lock this is: (client, mount, domain, owner)."""
        return self.client, self.mount, self.domain, self.owner

    def of(self, client: int, mount: int) -> bool:
        """Whether this lock is of that client's mount."""
        return self.client == client and self.mount == mount


def lock_object(oid: int) -> int:
    """The id of the lock object of file ``oid``."""
    if not 0 < oid <= MAX_OID:
        raise ValueError(f"not a file's object id: {oid}")
    return oid | LOCK_SPACE


def is_lock_object(oid: int) -> bool:
    """Whether ``oid`` names a lock object."""
    return oid >= LOCK_SPACE


# The range algebra (pure) ---------------------------------------------------------------


def overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    """Whether two inclusive byte ranges share a byte."""
    return a_start <= b_end and b_start <= a_end


def conflicting(
    locks: list[Lock],
    holder: Holder,
    kind: int,
    start: int,
    end: int,
) -> Lock | None:
    """The first lock of another holder in ``holder``'s domain that a lock of ``kind`` on
    ``start..end`` conflicts with (an overlap where either is exclusive), or None."""
    if kind == UNLOCK:
        return None
    for lock in locks:
        if (
            lock.domain == holder[2]
            and lock.holder() != holder
            and overlap(lock.start, lock.end, start, end)
            and (kind == WRITE or lock.kind == WRITE)
        ):
            return lock
    return None


def _merged(mine: list[Lock]) -> list[Lock]:
    """One holder's locks with those of one kind that overlap or touch joined."""
    out: list[Lock] = []
    for lock in sorted(mine, key=lambda x: (x.kind, x.start)):
        last = out[-1] if out else None
        if last is not None and last.kind == lock.kind and lock.start <= last.end + 1:
            out[-1] = last._replace(end=max(last.end, lock.end))
        else:
            out.append(lock)
    return out


def apply(
    locks: list[Lock],
    holder: Holder,
    kind: int,
    start: int,
    end: int,
    expiry: int,
) -> list[Lock]:
    """``locks`` after ``holder`` locks (or unlocks, :data:`UNLOCK`) ``start..end`` as
    POSIX says: what the holder held in the range is replaced (a range it covers partly is
    cut, one it lies inside is split in two), then the holder's ranges of one kind that
    overlap or touch are merged.  Conflicts are not checked (:func:`conflicting`)."""
    client, mount, domain, owner = holder
    others = [lock for lock in locks if lock.holder() != holder]
    mine: list[Lock] = []
    for lock in locks:
        if lock.holder() != holder:
            continue
        if not overlap(lock.start, lock.end, start, end):
            mine.append(lock)
            continue
        if lock.start < start:
            mine.append(lock._replace(end=start - 1))
        if lock.end > end:
            mine.append(lock._replace(start=end + 1))
    if kind != UNLOCK:
        mine.append(Lock(client, mount, domain, owner, start, end, kind, expiry))
    return sorted(others + _merged(mine))


def renewed(locks: list[Lock], client: int, mount: int, expiry: int) -> list[Lock]:
    """Every lock of ``client``'s ``mount`` now lives until ``expiry``."""
    return [lock._replace(expiry=expiry) if lock.of(client, mount) else lock for lock in locks]


def live(locks: list[Lock], at: int | None) -> list[Lock]:
    """The locks whose lease runs at ``at`` (all of them for None)."""
    return [lock for lock in locks if at is None or lock.expiry > at]


# States and arguments ----------------------------------------------------------------------


def locks_of(state: Any) -> list[Lock]:
    """The entries of a lock object's state (``[]`` for none).

    Raises:
        MethodRefused: ``invalid`` for a state that is not a lock object's (a file's or a
            directory's: lock methods change nothing else).
    """
    if state is None:
        return []
    if not isinstance(state, dict) or state.get("k") != "l":
        raise MethodRefused("invalid", "not a lock object")
    return [Lock(*entry) for entry in state["h"]]


def waiters_of(state: Any) -> list[list[int]]:
    """The waiters a lock object records: ``[[client, expiry], ...]`` (``[]`` for none)."""
    if not isinstance(state, dict):
        return []
    got = state.get("w")
    return [list(w) for w in got] if isinstance(got, list) else []


def _state(locks: list[Lock], waiters: list[list[int]]) -> dict[str, Any]:
    out: dict[str, Any] = {"k": "l", "h": [list(lock) for lock in sorted(locks)]}
    if waiters:
        out["w"] = sorted(waiters)
    return out


def _freed(before: list[Lock], after: list[Lock]) -> bool:
    """Whether an update dropped or changed a lock (so a waiter may get its lock now)."""
    kept = {lock[:7] for lock in after}
    return any(lock[:7] not in kept for lock in before)


def _settle(
    oid: int, state: Any, before: list[Lock], after: list[Lock], at: int, wake: list[Any]
) -> dict[str, Any]:
    """The new state of a lock object: its waiters are woken (appended to ``wake`` as
    ``[oid, [client, ...]]``, and forgotten: one still blocked asks again) when the update
    freed something, else kept (those whose wait ended by ``at`` go)."""
    waiters = [w for w in waiters_of(state) if at < w[1]]
    if waiters and _freed(before, after):
        wake.append([oid, sorted({w[0] for w in waiters})])
        waiters = []
    return _state(after, waiters)


def _only_lock_objects(states: States) -> None:
    for oid in states:
        if not is_lock_object(oid):
            raise MethodRefused("invalid", f"object {oid} is not a lock object")


def _range(a: dict[str, Any]) -> tuple[int, int]:
    start = check_int(a, "s", 0, OFFSET_MAX)
    end = check_int(a, "e", start, OFFSET_MAX)
    return start, end


def _mount(a: dict[str, Any]) -> int:
    return check_int(a, "m", 0, MAX_OWNER)


def _holder(a: dict[str, Any], client: int) -> Holder:
    return client, _mount(a), check_int(a, "d", POSIX, FLOCK), check_int(a, "o", 0, MAX_OWNER)


def _lease(a: dict[str, Any]) -> tuple[int, int]:
    """The caller's lease time and the expiry it asks for."""
    at = check_int(a, LOCK_TIME, MIN_TIME, MAX_TIME)
    return at, min(at + check_int(a, "term", 1, MAX_LOCK_TERM), MAX_TIME)


def held_by(locks: list[Lock], client: int, mount: int) -> list[list[int]]:
    """What ``client``'s ``mount`` holds, as an answer: ``[[domain, owner, start, end,
    kind], ...]``."""
    mine = [x for x in sorted(locks) if x.of(client, mount)]
    return [[x.domain, x.owner, x.start, x.end, x.kind] for x in mine]


# Methods -----------------------------------------------------------------------------------


def fs_setlk(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Take, change or drop (kind ``t`` = :data:`UNLOCK`) the lock of owner ``o`` of the
    caller's mount ``m`` in domain ``d`` on bytes ``s..e`` of the one lock object, and
    renew all the mount's entries on it to ``lt + term``.

    Refused ``conflict`` when another holder's live lock conflicts (nothing changes: the
    caller may wait and ask again), ``no-locks`` past :data:`MAX_LOCKS` entries.  The
    answer: ``{"h": what the mount holds on the object afterwards (:func:`held_by`), which
    it compares with what it believes it holds, "w": the waiters to wake}``
    (:func:`_settle`; every node that took the update pushes them, ``node/recalls.py``)."""
    _only_lock_objects(states)
    a = check_arg(arg)
    holder = _holder(a, caller)
    kind = check_int(a, "t", UNLOCK, WRITE)
    start, end = _range(a)
    at, expiry = _lease(a)
    new: dict[int, Any] = {}
    held: list[list[int]] = []
    wake: list[Any] = []
    for oid, state in states.items():
        before = locks_of(state)
        locks = live(before, at)
        other = conflicting(locks, holder, kind, start, end)
        if other is not None:
            raise MethodRefused(
                "conflict", f"bytes {other.start}..{other.end} of {oid} are locked by another"
            )
        locks = renewed(apply(locks, holder, kind, start, end, expiry), caller, holder[1], expiry)
        if len(locks) > MAX_LOCKS:
            raise MethodRefused("no-locks", f"object {oid} has {MAX_LOCKS} locks")
        new[oid] = _settle(oid, state, before, locks, at, wake)
        held = held_by(locks, caller, holder[1])
    return new, {"h": held, "w": wake}


def fs_unlock_owner(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Drop every lock of owner ``o`` (any domain) of the caller's mount ``m``, or with
    ``o`` absent every lock of the mount, on each lock object (a close, a release, an
    unmount).  The answer: ``{"w": the waiters to wake}`` (:func:`_settle`)."""
    _only_lock_objects(states)
    a = check_arg(arg)
    mount = _mount(a)
    owner = None if a.get("o") is None else check_int(a, "o", 0, MAX_OWNER)
    at = check_int(a, LOCK_TIME, MIN_TIME, MAX_TIME)
    new: dict[int, Any] = {}
    wake: list[Any] = []
    for oid, state in states.items():
        before = locks_of(state)
        locks = [
            lock
            for lock in live(before, at)
            if not lock.of(caller, mount) or (owner is not None and lock.owner != owner)
        ]
        new[oid] = _settle(oid, state, before, locks, at, wake)
    return new, {"w": wake}


def fs_renewlk(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Renew the live locks of the caller's mount ``m`` on each object to ``lt + term``.
    The answer: ``{"h": per object in request order, what the mount holds
    (:func:`held_by`): a lock whose lease had already ended is not among them, and the
    mount learns it lost it; "w": the waiters to wake}`` (locks that lapsed free bytes)."""
    _only_lock_objects(states)
    a = check_arg(arg)
    at, expiry = _lease(a)
    mount = _mount(a)
    new: dict[int, Any] = {}
    held = []
    wake: list[Any] = []
    for oid, state in states.items():
        before = locks_of(state)
        locks = renewed(live(before, at), caller, mount, expiry)
        new[oid] = _settle(oid, state, before, locks, at, wake)
        held.append(held_by(locks, caller, mount))
    return new, {"h": held, "w": wake}


def fs_lkwait(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Wait for a lock: records the caller as a waiter on the one lock object until
    ``lt +`` :data:`WAIT_TERM`, to be woken by the next update that frees something there
    (:func:`_settle`), when the lock it wants (``m``, ``d``, ``o``, ``t``, ``s``, ``e`` as
    for ``fs.setlk``) still conflicts.  The answer: True when it waits, False when the
    lock is free now (nothing recorded: ask for it).  Past :data:`MAX_WAITERS` nobody
    more is recorded (True all the same: the waiter polls)."""
    _only_lock_objects(states)
    a = check_arg(arg)
    holder = _holder(a, caller)
    kind = check_int(a, "t", READ, WRITE)
    start, end = _range(a)
    at = check_int(a, LOCK_TIME, MIN_TIME, MAX_TIME)
    new: dict[int, Any] = {}
    waits = False
    for oid, state in states.items():
        locks = locks_of(state)
        waiters = [w for w in waiters_of(state) if at < w[1] and w[0] != caller]
        if conflicting(live(locks, at), holder, kind, start, end) is not None:
            waits = True
            if len(waiters) < MAX_WAITERS:
                waiters.append([caller, min(at + WAIT_TERM, MAX_TIME)])
        new[oid] = _state(locks, waiters) if state is not None or waiters else None
    return new, waits


def fs_getlk(states: States, arg: Any, caller: int) -> Any:
    """The first lock of another holder that a lock of kind ``t`` on ``s..e`` by owner
    ``o`` of mount ``m`` in domain ``d`` would conflict with, as ``[client, mount, domain,
    owner, start, end, kind]``, or None.  Locks whose lease ended by the asker's ``lt`` do
    not count (the asker's time: a wrong one misleads only the asker)."""
    _only_lock_objects(states)
    a = check_arg(arg)
    holder = _holder(a, caller)
    kind = check_int(a, "t", READ, WRITE)
    start, end = _range(a)
    at = None if a.get(LOCK_TIME) is None else check_int(a, LOCK_TIME, MIN_TIME, MAX_TIME)
    for state in states.values():
        other = conflicting(live(locks_of(state), at), holder, kind, start, end)
        if other is not None:
            return list(other[:7])
    return None
