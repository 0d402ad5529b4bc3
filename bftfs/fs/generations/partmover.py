"""The partition mover (issue 66; docs/layout.md, "Moving partitions"): everything a
moving layout places on another group than before, copied there, so that the layout can
be finished (``bftfs group finish``).

A grown layout (``layout/builder.grow``) names the maps its partitions move from.  Mounts
move objects on first touch and read blocks the target lacks from the source
(``fs/generations/partitions.py``); what nobody touches is moved here.  The walk goes
group by group over each group's object listing, as the generation mover walks a
generation's (``mover.list_page``), and for every object listed:

- an object whose partition moves away from the group is moved to its target (the
  mount's own router, so leases and races are handled as for any client);
- every file's blocks whose block partition moves (a file's blocks are placed apart from
  its attributes, so any file may have some) are copied from their source group to their
  target group as *moved* versions, paced, when the target holds none.

The cursor is one :class:`~bftfs.fs.generations.mover.MoveState` per group walked, saved
after each page to ``<dir>/layout<V>/move<G>.json`` (:func:`cursor_path`); a run resumes
from them, and the move is complete when every group's cursor is
(:func:`move_complete`).
"""

from __future__ import annotations

from pathlib import Path

from bftfs.fs.generations.mover import MoveState
from bftfs.layout.model import Layout


def cursor_dir(home: Path, version: int) -> Path:
    """Where the move of layout ``version`` keeps its cursors."""
    return home / f"layout{version}"


def cursor_path(home: Path, version: int, group: int) -> Path:
    """The cursor of the walk of group ``group``'s objects for layout ``version``."""
    return cursor_dir(home, version) / f"move{group}.json"


def walked_groups(layout: Layout) -> list[int]:
    """The groups whose objects the move of ``layout`` walks: every group but those it
    adds (an added group holds only what moved to it)."""
    return sorted({g for table in (layout.from_objects, layout.from_blocks) for g in table})


def move_states(home: Path, layout: Layout) -> dict[int, MoveState | None]:
    """Each walked group's saved cursor for ``layout``'s move (None: not started)."""
    out: dict[int, MoveState | None] = {}
    for g in walked_groups(layout):
        got = MoveState.load(cursor_path(home, layout.version, g))
        out[g] = got if got is not None and got.view == layout.version else None
    return out


def move_complete(home: Path, layout: Layout) -> bool:
    """Whether ``layout``'s move walked every group to the end (a layout moving nothing:
    trivially)."""
    if not layout.moving:
        return True
    return all(s is not None and s.complete for s in move_states(home, layout).values())


def describe_move(home: Path, layout: Layout) -> str:
    """One line on how far ``layout``'s move is, for ``bftfs group finish`` and
    ``bftfs status``."""
    if not layout.moving:
        return f"layout {layout.version} moves nothing"
    parts = []
    for g, s in move_states(home, layout).items():
        if s is None:
            parts.append(f"group {g}: not walked yet")
        elif s.complete:
            parts.append(f"group {g}: complete ({s.summary()})")
        else:
            parts.append(f"group {g}: stopped after object {s.after} ({s.summary()})")
    return "; ".join(parts)
