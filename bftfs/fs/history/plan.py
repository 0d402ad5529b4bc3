"""Planning over the past (pure): which objects changed in a time range and by whom, and how
to undo one client's changes (``bftfs changes``, ``bftfs revert --client``; issue 17).

Inputs are the trees of :meth:`Past.tree` at the start and the end of the range (relative
path -> :class:`~bftfs.fs.history.versions.Version`) and each object's versions in the
range; outputs are plain data the command line prints or carries out through a mount.
Nothing here reads the cluster, so every rule is tested at tier 1 (``tests/t1_history.py``).

**Undoing a client** (no peer has it; a user whose laptop key was stolen needs it): an
object whose every change in the range was made by that client goes back to its state at
the start: created by it -> removed; removed or renamed by it -> back at its old path with
its old content; written -> its old content and attributes.  An object another client
changed *after* the client's first change in the range is a **conflict**: left as it is
and reported, so nobody's later work is lost.  Objects only others changed are not
touched.  Directories are not restored as objects: their entries follow from the files and
directories inside them (a directory the client created is removed with what it holds, if
it holds nothing of others).
"""

from __future__ import annotations

import stat as st
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bftfs.fs.history.versions import Version


@dataclass(frozen=True)
class Change:
    """One version in the range, where it happened."""

    time_ns: int | None
    client: int
    path: str
    changes: tuple[str, ...]
    oid: int


def changes_in(
    before: Mapping[str, Version],
    after: Mapping[str, Version],
    versions: Mapping[int, Sequence[Version]],
    *,
    since_ns: int,
    until_ns: int,
) -> list[Change]:
    """Every version of the objects of ``before`` and ``after`` stored in ``(since_ns,
    until_ns]``, oldest first, each with the object's path (at the end, else at the start).

    ``versions``: each object's versions, newest first (:class:`ObjectHistory`)."""
    paths: dict[int, str] = {v.oid: rel for rel, v in before.items()}
    paths.update({v.oid: rel for rel, v in after.items()})
    out = [
        Change(v.time_ns, v.client, path, v.changes, oid)
        for oid, path in paths.items()
        for v in versions.get(oid, ())
        if in_range(v, since_ns, until_ns)
    ]
    return sorted(out, key=lambda c: (c.time_ns, c.path))


def in_range(v: Version, since_ns: int, until_ns: int) -> bool:
    """Whether ``v`` is known to be stored in ``(since_ns, until_ns]`` (a version of
    unknown time is not: it is one fewer than ``2b + 1`` nodes still report, older than
    what retention keeps everywhere)."""
    return v.time_ns is not None and since_ns < v.time_ns <= until_ns


@dataclass(frozen=True)
class Action:
    """One step of a revert, carried out in order through a mount.

    ``kind``: ``remove`` (``path``, now), ``move`` (``path`` now -> ``to``), ``restore``
    (write ``version``'s content and attributes at ``path``; ``version`` is the object at
    the start), ``mkdir`` (``path`` with ``version``'s attributes).
    """

    kind: str
    path: str
    to: str = ""
    version: Version | None = None


@dataclass
class RevertPlan:
    actions: list[Action]
    #: (path, why) of objects left alone because another client changed them later.
    conflicts: list[tuple[str, str]]


def _state_key(v: Version | None) -> Any:
    if v is None or v.state is None:
        return None
    s = v.state
    return (
        s.get("k"),
        s.get("size"),
        s.get("i"),
        s.get("d"),
        s.get("bt"),
        s.get("t"),
        int(s.get("mode", 0)) & 0o7777,
        s.get("uid"),
        s.get("gid"),
    )


def plan_revert(
    client: int,
    before: Mapping[str, Version],
    after: Mapping[str, Version],
    versions: Mapping[int, Sequence[Version]],
    *,
    since_ns: int,
    until_ns: int,
) -> RevertPlan:
    """How to undo ``client``'s changes in ``(since_ns, until_ns]`` (module docstring).

    ``before``/``after``: the trees at the start and the end; ``versions``: each object's
    versions, newest first.  Directories are handled through their contents.
    """
    then_path = {v.oid: rel for rel, v in before.items()}
    now_path = {v.oid: rel for rel, v in after.items()}
    then_ver = {v.oid: v for v in before.values()}
    dirs_then = {rel for rel, v in before.items() if v.state and v.state.get("k") == "d"}
    actions: list[Action] = []
    conflicts: list[tuple[str, str]] = []
    removals: list[str] = []
    for oid in sorted(set(then_path) | set(now_path), key=lambda o: now_path.get(o, "")):
        ranged = sorted(
            (v for v in versions.get(oid, ()) if in_range(v, since_ns, until_ns)),
            key=lambda v: v.time_ns or 0,
        )
        mine = [v for v in ranged if v.client == client]
        if not mine:
            continue
        path = now_path.get(oid, then_path.get(oid, ""))
        v_any = after.get(path) if oid in now_path else then_ver.get(oid)
        is_dir_obj = v_any is not None and v_any.state is not None and v_any.state.get("k") == "d"
        placed = oid in then_path and oid in now_path and then_path[oid] == now_path[oid]
        if is_dir_obj and placed:
            continue  # a directory's entries follow from its contents (module docstring)
        first = mine[0].time_ns or 0
        later = [v for v in ranged if v.client != client and (v.time_ns or 0) > first]
        if later:
            conflicts.append((path, "changed later by another client"))
            continue
        if oid not in then_path:  # created by the client in the range
            if oid in now_path and now_path[oid] != "":
                removals.append(now_path[oid])
            continue
        old = then_ver[oid]
        is_dir = old.state is not None and old.state.get("k") == "d"
        target = then_path[oid]
        if oid in now_path and now_path[oid] != target:
            actions.append(Action("move", now_path[oid], target))
        elif oid not in now_path:
            actions.append(Action("mkdir" if is_dir else "restore", target, version=old))
            continue
        current = after.get(now_path[oid])
        if not is_dir and _state_key(current) != _state_key(old):
            actions.append(Action("restore", target, version=old))
    # Created by the client: removed, unless something of someone else's is inside (a
    # directory another client put a file into since: a conflict, kept).
    removing = set(removals)
    for rel in sorted(removals):
        inside = [p for p in after if p.startswith(rel + "/") and p not in removing]
        if rel in dirs_then or inside:
            conflicts.append((rel, "holds entries others made"))
            continue
        actions.append(Action("remove", rel))
    # Removals first (they free names), then directories back (parents first), then moves
    # back, then contents (a moved file's after its move).
    order = {"remove": 0, "mkdir": 1, "move": 2, "restore": 3}
    actions.sort(key=lambda a: (order[a.kind], a.path.count("/"), a.path))
    return RevertPlan(actions, conflicts)


@dataclass(frozen=True)
class TreeSize:
    """What a past tree holds: its regular files and the bytes of their contents."""

    files: int
    bytes: int


def tree_size(tree: Mapping[str, Version]) -> TreeSize:
    """The files of ``tree`` (:meth:`Past.tree`) and their bytes, each file once however
    many names it has (hard links).  This is the apparent size, what ``du -b`` of the tree
    would say: what the moment's files read back, not what the nodes store for it
    (fragments, versions shared with other moments), which no client can count honestly."""
    seen: set[int] = set()
    total = 0
    for v in tree.values():
        s = v.state
        if s is None or s.get("k") != "f" or v.oid in seen:
            continue
        if not st.S_ISREG(int(s.get("mode", 0))):
            continue  # symbolic links, devices, fifos: no contents counted
        seen.add(v.oid)
        total += int(s.get("size", 0))
    return TreeSize(len(seen), total)
