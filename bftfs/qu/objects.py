"""Q/U object types: a registry of deterministic methods (seed L2124-2129, L2344-2346).

A Q/U object exports deterministic methods; *queries* read, *updates* produce a new version.
Methods run on the servers, so a method is also where a server refuses an illegal call from
a Byzantine client (server-side validation is how Q/U narrows what a faulty client can do,
L1963-1966): it raises :class:`MethodRefused`, the server changes nothing and says so.

Object state is any canonical msgpack value (:mod:`bftfs.qu.canon`); ``None`` means the
object does not exist yet, which is the state of every object at ``<0,0>``.  A method gets
the states of all objects of the request as a mapping ``object id -> state`` (one entry for a
single-object method) and an argument, and returns new states for *every* object (updates)
or just an answer (queries).  Determinism is the method's contract: no clock, no randomness,
no I/O, no floats; the registry re-encodes states and answers canonically so two servers
that ran the same method on the same versions store byte-identical objects.

Registries are explicit values (no import-time global): a node is given the registry of the
object types it serves, tests build their own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bftfs.qu.canon import CanonicalError, canonical, normalise
from bftfs.qu.timestamp import MAX_OBJECTS


class Class(enum.Enum):
    """Seed line 100: whether a method reads (QUERY) or modifies (UPDATE) its objects."""

    QUERY = "query"
    UPDATE = "update"


class MethodRefused(Exception):
    """A method refused an illegal call; nothing changes.  ``code`` is a short stable word.

    Raised by object methods on the servers and, once ``b + 1`` agree, by the client; a
    PASIS node refusing a write raises ``bftfs.rw.replica.WriteRefused`` instead.
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


#: The refusal of a method the nodes do not have (nodes of an older release).
NO_SUCH_METHOD = "no-such-method"


def unknown_method(e: BaseException) -> bool:
    """Whether ``e`` (a :class:`MethodRefused`, or the file-system error a client turned
    it into, whose text starts with the code) says the nodes have no such method: a
    feature newer than they are, which the caller then stops asking for."""
    return str(e).startswith(NO_SUCH_METHOD)


States = Mapping[int, Any]

#: The key of a state that carries an intent of the cross-group commit
#: (``fsobjects/txnmethods.py``): ``{INTENT: {"d": digest, "c": group, "r": record}, ...}``.
INTENT = "~intent"
#: The key of a transaction's record (``fsobjects/txnmethods.py``).
RECORD = "~record"


def intent_refusal(states: States) -> MethodRefused | None:
    """The refusal of any method but the commit's own on ``states`` when one carries an
    intent: ``intent <T's digest hex> <coordinator group> <record object>``, what a client
    needs to resolve T (the objects are locked by a state their group ordered); or when
    one is a transaction's record (``txn-record``: only the commit's methods change it)."""
    for st in states.values():
        if isinstance(st, Mapping) and RECORD in st:
            return MethodRefused("txn-record")
        if isinstance(st, Mapping) and INTENT in st:
            it = st[INTENT]
            try:
                return MethodRefused(f"intent {it['d'].hex()} {int(it['c'])} {int(it['r'])}")
            except (KeyError, TypeError, ValueError, AttributeError):
                return MethodRefused("intent")
    return None


QueryFn = Callable[[States, Any], Any]
UpdateFn = Callable[[States, Any], tuple[Mapping[int, Any], Any]]


@dataclass(frozen=True)
class Method:
    """One method of an object type."""

    name: str  # "<type>.<method>", unique in a registry
    cls: Class
    fn: Callable[..., Any]  # QueryFn for queries, UpdateFn for updates
    min_objects: int = 1
    max_objects: int = 1  # <= MAX_OBJECTS
    #: Keys of the argument (a map) that carry times in ns the caller takes from its clock
    #: and that bound what others may do (a lease's start, a file's newest block Time).  A
    #: node refuses a client's own such update when one of them lies further ahead of the
    #: node's clock than the skew it accepts for PASIS writes (``Registry.declared_time``,
    #: ``replica.handle_request``): outside the method, which reads no clock, so one client
    #: cannot claim a time years ahead and lock others out (issue 31).
    clocks: tuple[str, ...] = ()
    #: Whether the method is told who calls it: ``fn(states, arg, caller)`` with the principal
    #: id the request's timestamp names (its authenticated sender, or for an inline repair
    #: the client b + 1 hosts took it from), the same on every server; for a query, the
    #: authenticated sender (0 where no client asks: a history read, a checker's replay).
    caller: bool = False
    #: The argument key of a lease time (``bftfs.fsobjects.leases``): a node refuses a
    #: client's own update whose value lies more than the lease skew ahead of its clock
    #: (``Registry.lease_time``), and for a method that grants leases (``grants``) behind.
    lease_clock: str | None = None
    lease_skew: int = 0
    grants: bool = False
    #: An argument key whose presence makes an update of this method grant a lease
    #: (checked behind too, as ``grants``): a create that leases what it makes.
    grants_with: str | None = None
    #: A query told the object's applied table too (``qu/replica.py``: who last updated it
    #: with which ``seq`` and answer), as ``fn(states, arg, applied)`` with the canonical
    #: bytes of each object's table: a move reads it with the state (issue 35).
    applied: bool = False
    #: An update whose new version takes its applied table from the argument's key of
    #: this name (canonical bytes; absent: as any update) instead of the conditioned-on
    #: version's: a move installs the old generation's table with the state, so an update
    #: that took effect there is known as done when its client retries it here.
    installs_applied: str | None = None
    #: A method of the cross-group commit (``fsobjects/txn.py``): it runs on objects that
    #: carry an intent (every other method is refused ``intent``, :func:`intent_refusal`),
    #: and a node signs its OK replies (``replica.handle_request``).
    txn: bool = False
    #: An update told the timestamp of the version it makes (canonical bytes; None where
    #: the engine has none): ``fn(states, arg, caller, version)``, with :attr:`caller`.
    #: The same at every server (the request determines it); ``txn.prepare`` keeps it in
    #: its intent so that ``txn.finish`` applies only the certified one.
    version: bool = False


@dataclass(frozen=True)
class ObjectType:
    """A named set of methods (``counter``, ``directory``...).

    ``finished``: whether a state is one no later update will revive (a removed file, a
    removed directory): a server then keeps only its newest version once retention's age
    has passed (``bftfs.qu.serverconfig.Retention``).  None: no state is.
    """

    name: str
    methods: tuple[Method, ...]
    finished: Callable[[Any], bool] | None = None


class Registry:
    """The object types a node serves and a client may call."""

    def __init__(self, types: Iterable[ObjectType] = ()) -> None:
        self._methods: dict[str, Method] = {}
        self._finished: list[Callable[[Any], bool]] = []
        for t in types:
            self.register(t)

    def finished(self, state: Any) -> bool:
        """Whether some registered type calls ``state`` finished (see :class:`ObjectType`)."""
        return any(pred(state) for pred in self._finished)

    def register(self, otype: ObjectType) -> None:
        """Add every method of ``otype``.

        Raises:
            ValueError: a method name is taken, not prefixed by the type name, or its object
                bounds are outside ``1..MAX_OBJECTS``.
        """
        for m in otype.methods:
            if not m.name.startswith(otype.name + "."):
                raise ValueError(f"method {m.name} must be named {otype.name}.<method>")
            if m.name in self._methods:
                raise ValueError(f"method {m.name} registered twice")
            if not 1 <= m.min_objects <= m.max_objects <= MAX_OBJECTS:
                raise ValueError(f"method {m.name} has bad object bounds")
            self._methods[m.name] = m
        if otype.finished is not None:
            self._finished.append(otype.finished)

    def get(self, name: str) -> Method | None:
        """The method called ``name``, or None."""
        return self._methods.get(name)

    def declared_time(self, name: str, arg: Any) -> int | None:
        """The latest time an update ``name`` declares in ``arg`` (:attr:`Method.clocks`),
        or None (no such method or keys, or not integers: the method judges those)."""
        m = self._methods.get(name)
        if m is None or not m.clocks or not isinstance(arg, Mapping):
            return None
        times = [arg.get(k) for k in m.clocks]
        ints = [v for v in times if isinstance(v, int) and not isinstance(v, bool)]
        return max(ints) if ints else None

    def lease_time(self, name: str, arg: Any) -> tuple[int, int, bool] | None:
        """The lease time an update ``name`` declares in ``arg``, the skew allowed and
        whether the method grants leases (:attr:`Method.lease_clock`), or None (no such
        key, or not an integer: the method judges that)."""
        m = self._methods.get(name)
        if m is None or m.lease_clock is None or not isinstance(arg, Mapping):
            return None
        v = arg.get(m.lease_clock)
        if not isinstance(v, int) or isinstance(v, bool):
            return None
        grants = m.grants or (m.grants_with is not None and arg.get(m.grants_with) is not None)
        return v, m.lease_skew, grants

    def installed_applied(self, name: str, arg: Any) -> Any:
        """The applied table an update ``name`` installs from ``arg``
        (:attr:`Method.installs_applied`), or None: the update records itself as usual."""
        m = self._methods.get(name)
        if m is None or m.installs_applied is None or not isinstance(arg, Mapping):
            return None
        return arg.get(m.installs_applied)

    def names(self) -> list[str]:
        """Every registered method name, sorted."""
        return sorted(self._methods)

    def _checked(self, name: str, cls: Class, nobjects: int) -> Method:
        m = self._methods.get(name)
        if m is None:
            raise MethodRefused(NO_SUCH_METHOD, name)
        if m.cls is not cls:
            raise MethodRefused("wrong-class", f"{name} is a {m.cls.value}")
        if not m.min_objects <= nobjects <= m.max_objects:
            raise MethodRefused("wrong-objects", f"{name} takes {m.min_objects}..{m.max_objects}")
        return m

    def query(
        self,
        name: str,
        states: States,
        arg: Any,
        caller: int = 0,
        applied: Mapping[int, bytes] | None = None,
    ) -> Any:
        """Run query ``name``; the answer in canonical form.  ``caller``: the client asking
        (:attr:`Method.caller`); ``applied``: each object's applied table
        (:attr:`Method.applied`).

        Raises:
            MethodRefused: unknown method, an update, wrong number of objects, or the method
                refused.  An unexpected exception inside a method is deterministic too (same
                code, same input), so it is reported as the refusal ``method-error``.
        """
        m = self._checked(name, Class.QUERY, len(states))
        held = None if m.txn else intent_refusal(states)
        if held is not None:
            raise held
        try:
            if m.applied:
                return normalise(m.fn(states, arg, applied or {}))
            return normalise(m.fn(states, arg, caller) if m.caller else m.fn(states, arg))
        except MethodRefused:
            raise
        except CanonicalError as e:
            raise MethodRefused("bad-answer", str(e)) from e
        except Exception as e:  # noqa: BLE001 - see docstring
            raise MethodRefused("method-error", type(e).__name__) from e

    def update(
        self, name: str, states: States, arg: Any, caller: int = 0, version: bytes | None = None
    ) -> tuple[dict[int, bytes], Any]:
        """Run update ``name``: the canonical bytes of every new state, and the answer.
        ``caller``: the principal the request's timestamp names (:attr:`Method.caller`);
        ``version``: the timestamp of the version it makes (:attr:`Method.version`).

        Raises:
            MethodRefused: as for :meth:`query`, or the method did not return one state for each
                object it was given.
        """
        m = self._checked(name, Class.UPDATE, len(states))
        held = None if m.txn else intent_refusal(states)
        if held is not None:
            raise held
        try:
            if m.version:
                new, answer = m.fn(states, arg, caller, version)
            else:
                new, answer = m.fn(states, arg, caller) if m.caller else m.fn(states, arg)
            if set(new) != set(states):
                raise MethodRefused("bad-update", "must return a state for every object")
            return {oid: canonical(v) for oid, v in new.items()}, normalise(answer)
        except MethodRefused:
            raise
        except CanonicalError as e:
            raise MethodRefused("bad-state", str(e)) from e
        except Exception as e:  # noqa: BLE001 - see docstring
            raise MethodRefused("method-error", type(e).__name__) from e
