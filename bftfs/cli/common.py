"""What every ``bftfs`` command shares: the exit codes, :class:`QuietError`, the
``--dir``/``--config`` options and the cluster they name, sizes in and out.

Exit codes (shared by every subcommand):

====  =====================================================================
0     success
1     unexpected error (a bug: the traceback is printed)
2     usage error (argparse)
3     bad configuration (the message names the rule)
4     the cluster cannot be created, started or reached as asked
5     a key file is missing, unreadable or readable by others
6     mounting or unmounting failed
7     a history question has no answer (no such path then, or retention let it go)
8     ``restore`` or ``revert`` stopped part way (a write failed)
32    ``umount`` or ``down`` refused: a mount is busy (as umount(8))
130   interrupted (Ctrl-C: 128 + SIGINT, as shells)
====  =====================================================================

``bftfs --help`` lists them from :data:`EXIT_CODES` (a test checks that every ``EXIT_*``
here is there); ``bftfs status`` and ``bftfs verify`` give 1 and 2 meanings of their own,
which their help says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bftfs import local as localmod
from bftfs.cli import discover
from bftfs.config import ClusterConfig

EXIT_OK = 0
#: An unexpected error: a bug, its traceback printed.
EXIT_BUG = 1
#: A usage error: argparse's, and a WHEN or PATH a history command cannot take.
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_CLUSTER = 4
EXIT_KEY = 5
EXIT_MOUNT = 6
EXIT_HISTORY = 7
#: ``restore`` or ``revert`` stopped part way: a write failed (what was written stays).
EXIT_WRITE = 8
#: ``umount`` (or ``down``) refused: the mount is busy (umount(8)'s code for it).
EXIT_BUSY = 32
#: Ctrl-C (128 + SIGINT, as shells and restic): never a code a command gives a meaning to.
EXIT_INTERRUPTED = 130

#: Every exit code and what it means, in the order ``bftfs --help`` lists them.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_BUG, "unexpected error (a bug: the traceback is printed)"),
    (EXIT_USAGE, "usage (also a WHEN that does not parse or is in the future)"),
    (EXIT_CONFIG, "bad configuration"),
    (EXIT_CLUSTER, "the cluster cannot be created, started or reached"),
    (EXIT_KEY, "a key file is missing, unreadable or readable by others"),
    (EXIT_MOUNT, "mounting or unmounting failed"),
    (EXIT_HISTORY, "a history question has no answer"),
    (EXIT_WRITE, "restore or revert stopped part way (a write failed)"),
    (EXIT_BUSY, "umount or down refused: a mount is busy"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


def exit_codes_text() -> str:
    """The epilog of ``bftfs --help``: every code of :data:`EXIT_CODES`, one line each
    (``bftfs status`` and ``verify`` add their own 1 and 2 in their help)."""
    lines = [f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES]
    return (
        "exit codes:\n"
        + "\n".join(lines)
        + (
            "\n  (bftfs status: 0 healthy, 1 degraded, 2 unavailable; "
            "bftfs verify: 1 damage found and rewritten)"
        )
    )


class QuietError(Exception):
    """A user error: print the message alone and exit with ``exitcode``."""

    def __init__(self, message: str, exitcode: int) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def parse_size(text: str) -> int:
    """Parse ``4096``, ``64K``, ``16G`` (powers of 1024)."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def human(n: float) -> str:
    """``n`` bytes in the largest binary unit up to PiB (``16.0 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def config_of(args: argparse.Namespace) -> Path:
    """The ``cluster.toml`` of ``--config``, ``--dir``, or found without them by the rule
    of :mod:`bftfs.cli.discover` (``$BFTFS_CONFIG``, ``$BFTFS_DIR``, the per-user and system
    directories, ``./nodes``).

    Raises:
        localmod.ClusterError: no cluster there (exit 4); the message names every place
            searched, in order.
    """
    try:
        return discover.find_config(
            dir=getattr(args, "dir", None), config=getattr(args, "config", None)
        )
    except discover.NotFound as e:
        raise localmod.ClusterError(str(e)) from None


def cluster_of(args: argparse.Namespace) -> tuple[ClusterConfig, Path]:
    """The configuration :func:`config_of` finds, loaded, and its path; a ``bftfs node
    replace`` or ``bftfs group add`` interrupted after its commit point is completed first
    (``cli/layouts.py``, ``cli/growing.py``)."""
    from bftfs import config as cfgmod
    from bftfs.cli import groups, growing, layouts

    path = config_of(args)
    cfg = cfgmod.load(path)
    cfg = layouts.complete_interrupted(cfg, path)  # a `node replace` cut short (layout.md)
    cfg = growing.complete_interrupted(cfg, path, getattr(args, "command", None))  # `group add`
    groups.refuse(args, cfg)  # what several groups do not run yet: exit 3
    return cfg, path


def waiting_for_daemon(pid: int) -> None:
    """What an unmount prints while the mount daemon still sends what it held back (a
    silent wait of a minute or more looks like a hang)."""
    print(
        f"waiting for the mount daemon (pid {pid}) to send what it holds back (as long as"
        " that goes on; it gives up after a minute without progress and logs what is lost)...",
        file=sys.stderr,
        flush=True,
    )


def with_dir(sp: argparse.ArgumentParser) -> None:
    """``--dir``: the cluster's directory (default: found as :mod:`bftfs.cli.discover`
    says, which ``None`` here leaves to :func:`config_of`)."""
    sp.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="cluster directory (default: $BFTFS_CONFIG, $BFTFS_DIR, ~/.config/bftfs, "
        "/etc/bftfs, /var/lib/bftfs, ./nodes: the first holding cluster.toml)",
    )


def with_cluster(sp: argparse.ArgumentParser) -> None:
    """``--dir`` or ``--config``: the cluster a command works on (:func:`cluster_of`)."""
    with_dir(sp)
    sp.add_argument("--config", type=Path, help="cluster.toml (instead of --dir)")


def with_identity(
    sp: argparse.ArgumentParser,
    *,
    default: str | None = "client0",
    help: str = "the client identity to act as (default client0)",
) -> None:
    """``--as CLIENT``: the identity a command acts as, one spelling for every command
    (issue 67).  ``--client`` meant this on ``mount``, ``up`` and ``verify`` before and is
    kept as a hidden, deprecated alias so fstab lines and scripts still work; where
    ``--client`` filters by writer (``log``, ``changes``, ``revert``) it keeps that meaning."""
    sp.add_argument("--as", dest="as_client", metavar="CLIENT", default=default, help=help)
    sp.add_argument("--client", dest="as_client", metavar="CLIENT", help=argparse.SUPPRESS)


def add_actions(sp: argparse.ArgumentParser, *, required: bool = True) -> Any:
    """The actions of a noun-verb command (``bftfs client add NAME``): each its own
    subparser, so ``bftfs client add --help`` shows add's options alone and an argument
    no action takes is refused (exit 2).  The chosen action is ``args.action``."""
    metavar = "ACTION" if required else "[ACTION]"
    return sp.add_subparsers(dest="action", required=required, metavar=metavar, title="actions")


def keep_parent_values(parent: argparse.ArgumentParser, actions: Any) -> None:
    """Options a parent parser also takes (the old ``bftfs node --config C --id I``,
    ``bftfs view --json``): argparse copies an action's defaults over the parent's values,
    so ``bftfs view --dir X push`` would drop ``--dir X``.  An action's option that the
    parent has gets no default of its own: the parent's value (or default) stands."""
    dests = {a.dest for a in parent._actions if a.dest != "help"}
    for action_parser in actions.choices.values():
        for a in action_parser._actions:
            if a.dest in dests:
                a.default = argparse.SUPPRESS
