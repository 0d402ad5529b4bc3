"""What a user would say changed between two states of an object (``bftfs log``,
``changes``; docs/history.md "What a version's changes say"), split from ``fs/history/past.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bftfs.fsobjects.dirents import all_entries


def _differs(a: dict[str, Any], b: dict[str, Any], keys: Iterable[str]) -> bool:
    return any(a.get(k) != b.get(k) for k in keys)


def gone(state: dict[str, Any]) -> bool:
    """A removed directory or a file no name reaches."""
    if state.get("k") == "d":
        return bool(state.get("dead"))
    return state.get("k") == "f" and state.get("nl") == 0


def changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[str, ...]:
    """What a user would say changed from ``before`` to ``after`` (either None: absent).

    Kinds: ``created``, ``removed``, ``written``, ``truncated``, ``chmod``, ``chown``,
    ``xattr``, ``linked``, ``unlinked``, ``touched`` (times only), ``renamed`` (the change
    time alone moved: a rename or a link elsewhere), and for directories ``added NAME``,
    ``removed NAME``, ``renamed OLD -> NEW``.  Empty: bookkeeping only.
    """
    if before is None and after is None:
        return ()
    if before is None:
        return ("created",)
    if after is None:
        return ("removed",)
    out: list[str] = []
    if gone(after) and not gone(before):
        return ("removed",)
    if after.get("k") == "d":
        old, new = all_entries(before["e"]), all_entries(after["e"])
        by_oid_old = {tuple(v)[0]: k for k, v in old.items() if k not in new}
        for name in sorted(set(new) - set(old)):
            src = by_oid_old.pop(new[name][0], None)
            if src is not None:
                out.append(
                    f"renamed {src.decode(errors='replace')} -> {name.decode(errors='replace')}"
                )
            else:
                out.append(f"added {name.decode(errors='replace')}")
        for name in sorted(by_oid_old.values()):
            out.append(f"removed {name.decode(errors='replace')}")
        for name in sorted(set(old) & set(new)):
            if old[name] != new[name]:
                out.append(f"replaced {name.decode(errors='replace')}")
    else:
        old_size, new_size = before.get("size", 0), after.get("size", 0)
        truncated = new_size < old_size or after.get("d") != before.get("d")
        if truncated:
            out.append("truncated")
        old_i, new_i = before.get("i"), after.get("i")
        # A truncation that keeps a prefix (or nothing) of the old content writes nothing.
        cut_inline = truncated and (new_i or b"") == (old_i or b"")[:new_size]
        if (
            after.get("bt") != before.get("bt")
            or (old_i != new_i and not cut_inline)
            or (new_size > old_size and not truncated)
        ):
            out.append("written")
        if after.get("nl", 1) > before.get("nl", 1):
            out.append("linked")
        elif after.get("nl", 1) < before.get("nl", 1):
            out.append("unlinked")
    if (after.get("mode", 0) & 0o7777) != (before.get("mode", 0) & 0o7777):
        out.append("chmod")
    if _differs(before, after, ("uid", "gid")):
        out.append("chown")
    if before.get("x") != after.get("x"):
        out.append("xattr")
    if not out and after.get("t") != before.get("t"):
        out.append("symlink")
    if not out and _differs(before, after, ("mt", "at")):
        out.append("touched")
    if not out and _differs(before, after, ("ct",)):
        out.append("renamed")
    return tuple(out)
