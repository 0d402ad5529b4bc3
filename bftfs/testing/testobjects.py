"""Two small object types for tests and benchmarks: ``counter`` and ``kv``.

``counter`` is the seed's example object (increment / fetch, L1970-1974, L2376-2406) plus a
multi-object ``transfer`` that moves an amount between counters and refuses overdrafts, which
is what the multi-object tests race in opposite orders.  ``kv`` is a small key-value map with
``put``/``get``/``delete`` and a two-object ``move`` (the shape of a rename).  Both refuse
illegal arguments, as file-system methods will.

Register them explicitly: ``Registry([COUNTER, KV])`` or :func:`registry`.  A node serves
them only when whoever starts it passes them in (``Node(extra_object_types=...)``: the
in-process test cluster, ``bftfs node --test-objects``); the node package never imports
this module.
"""

from __future__ import annotations

from typing import Any

from bftfs.qu.objects import Class, Method, MethodRefused, ObjectType, Registry, States

#: Upper bound of a counter, so the state always fits the canonical 64-bit integer range.
COUNTER_MAX = 1 << 62


def _count(state: Any) -> int:
    if state is None:
        return 0
    if not isinstance(state, int) or isinstance(state, bool):
        raise MethodRefused("not-a-counter")
    return state


def _amount(arg: Any, default: int = 1) -> int:
    amount = default if arg is None else arg
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < COUNTER_MAX:
        raise MethodRefused("bad-amount")
    return amount


def _increment(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    ((oid, state),) = states.items()
    value = _count(state) + _amount(arg)
    if value >= COUNTER_MAX:
        raise MethodRefused("overflow")
    return {oid: value}, value


def _fetch(states: States, arg: Any) -> Any:
    (state,) = states.values()
    return _count(state)


def _fetch_all(states: States, arg: Any) -> Any:
    """Every counter of the request, as ``[[oid, value], ...]`` (a batched read)."""
    return [[oid, _count(s)] for oid, s in sorted(states.items())]


def _transfer(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Move ``amount`` from counter ``src`` to counter ``dst``: arg ``[src, dst, amount]``."""
    if not isinstance(arg, list) or len(arg) != 3:
        raise MethodRefused("bad-argument")
    src, dst, amount = arg[0], arg[1], _amount(arg[2])
    if src == dst or src not in states or dst not in states:
        raise MethodRefused("bad-argument")
    have = _count(states[src])
    if have < amount:
        raise MethodRefused("insufficient")
    new = {oid: _count(s) for oid, s in states.items()}
    new[src] = have - amount
    new[dst] = new[dst] + amount
    if new[dst] >= COUNTER_MAX:
        raise MethodRefused("overflow")
    return new, [new[src], new[dst]]


def _add_all(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Add ``arg`` to every counter of the request (1 to 4 objects, one LT)."""
    amount = _amount(arg)
    new = {oid: _count(s) + amount for oid, s in states.items()}
    return new, sorted(new.items())


COUNTER = ObjectType(
    "counter",
    (
        Method("counter.increment", Class.UPDATE, _increment),
        Method("counter.fetch", Class.QUERY, _fetch),
        Method("counter.fetch_all", Class.QUERY, _fetch_all, 1, 8),
        Method("counter.transfer", Class.UPDATE, _transfer, 2, 2),
        Method("counter.add_all", Class.UPDATE, _add_all, 1, 4),
    ),
)


def _map(state: Any) -> dict[str, Any]:
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise MethodRefused("not-a-map")
    return state


def _key(arg: Any) -> str:
    if not isinstance(arg, str) or not 0 < len(arg) <= 255:
        raise MethodRefused("bad-key")
    return arg


def _get(states: States, arg: Any) -> Any:
    (state,) = states.values()
    return _map(state).get(_key(arg))


def _put(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    if not isinstance(arg, list) or len(arg) != 2:
        raise MethodRefused("bad-argument")
    ((oid, state),) = states.items()
    m = dict(_map(state))
    old = m.get(_key(arg[0]))
    m[arg[0]] = arg[1]
    return {oid: m}, old


def _delete(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    ((oid, state),) = states.items()
    m = dict(_map(state))
    if _key(arg) not in m:
        raise MethodRefused("no-such-key", arg)
    return {oid: m}, m.pop(arg)


def _move(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Move a key between two maps: arg ``[src_oid, src_key, dst_oid, dst_key]``."""
    if not isinstance(arg, list) or len(arg) != 4:
        raise MethodRefused("bad-argument")
    src, skey, dst, dkey = arg[0], _key(arg[1]), arg[2], _key(arg[3])
    if src == dst or src not in states or dst not in states:
        raise MethodRefused("bad-argument")
    a, b = dict(_map(states[src])), dict(_map(states[dst]))
    if skey not in a:
        raise MethodRefused("no-such-key", skey)
    if dkey in b:
        raise MethodRefused("exists", dkey)
    b[dkey] = a.pop(skey)
    return {src: a, dst: b}, None


KV = ObjectType(
    "kv",
    (
        Method("kv.get", Class.QUERY, _get),
        Method("kv.put", Class.UPDATE, _put),
        Method("kv.delete", Class.UPDATE, _delete),
        Method("kv.move", Class.UPDATE, _move, 2, 2),
    ),
)


def registry() -> Registry:
    """A registry with ``counter`` and ``kv``."""
    return Registry([COUNTER, KV])


#: What ``bftfs.node.qu_server`` loads from this module.
OBJECT_TYPES = (COUNTER, KV)
