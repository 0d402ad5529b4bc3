"""``bftfs group move [--bytes-per-second N] [--as CLIENT]``: the partition mover
(issue 66; docs/layout.md, "Moving partitions").

After ``bftfs group add`` issued a layout that moves partitions to new groups, this walks
every old group's objects and moves to its target what mounts did not touch yet,
copying the blocks of moving block partitions (``fs/generations/partmover.py``), with a
progress bar.  Killed, or stopped by the cluster (exit 4, the first cause named), it
resumes from its cursors when run again; once complete, ``bftfs group finish`` ends the
move.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from bftfs.cli.common import EXIT_CLUSTER, QuietError, cluster_of, with_cluster, with_identity
from bftfs.config import ClusterConfig
from bftfs.layout.model import Layout


def add_move_parser(actions: argparse._SubParsersAction) -> None:
    """``bftfs group move``'s options."""
    text = "copy what a grown layout moves to the new groups (the partition mover; resumable)"
    ap = actions.add_parser("move", help=text, description=text)
    ap.add_argument(
        "--bytes-per-second",
        type=int,
        default=0,
        metavar="N",
        help="pace of the block data copied (default 0: no limit)",
    )
    with_identity(ap, default=None, help="the client the move speaks as")
    with_cluster(ap)


def run_move(args: argparse.Namespace) -> int:
    """Run the mover to the end (module docstring); 0 once every group was walked."""
    from bftfs.cli.progress import progress
    from bftfs.fs.generations import MoveError
    from bftfs.fs.generations.partmover import describe_move, move_complete
    from bftfs.layout.groups import load_layout
    from bftfs.membership import admin

    cfg, _ = cluster_of(args)
    layout = load_layout(cfg)
    if layout is None or not layout.moving:
        what = "a cluster of one group" if layout is None else f"layout {layout.version}"
        raise QuietError(
            f"{what} moves no partitions: nothing to move (`bftfs group add` starts a move)", 2
        )
    if move_complete(cfg.home, layout):
        print(f"the move of layout {layout.version} is complete: {describe_move(cfg.home, layout)}")
        return 0
    who = args.as_client or admin.pusher(cfg)
    print(f"moving partitions of layout {layout.version} to groups {_targets(layout)}")
    with progress(f"moving to layout {layout.version}") as update:
        try:
            trio.run(lambda: _move(cfg, layout, who, args.bytes_per_second, update))
        except MoveError as e:
            raise QuietError(f"{e}: run `bftfs group move` again", EXIT_CLUSTER) from None
        except Exception as e:  # a quorum lost, a read or write failed: resumable
            raise QuietError(
                f"the move stopped ({_first(e)}): run `bftfs group move` again, it resumes "
                "from its last page",
                EXIT_CLUSTER,
            ) from None
    print(f"  {describe_move(cfg.home, layout)}")
    print("  complete: `bftfs group finish` ends the move")
    return 0


def _targets(layout: Layout) -> list[int]:
    return sorted({g for g in range(len(layout.groups)) if layout.moving_in(g)})


def _first(e: BaseException) -> str:
    """What went wrong, from the first leaf of a group (the mover's nurseries)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


async def _move(cfg: ClusterConfig, layout: Layout, who: str, rate: int, update: Any) -> None:
    from bftfs.fs.generations.partmover import move_layout

    await move_layout(
        cfg, layout, who, rate, on_progress=lambda _state, walked, listed: update(walked, listed)
    )
