"""The ``bftfs`` command: one front door with subcommands (STYLE.md section 6).

Each command group registers its own parsers: :mod:`~bftfs.cli.cluster` (``init``, ``up``,
``down``, ``bundle``, ``client``), :mod:`~bftfs.cli.status`, :mod:`~bftfs.cli.mounts`
(``mount``, ``umount``), :mod:`~bftfs.cli.history` (``log``, ``cat``, ``restore``,
``diff``, ``changes``, ``revert``, ``snapshot``), :mod:`~bftfs.cli.nodes` (``node``,
``verify``), :mod:`~bftfs.cli.quorums` (``quorums``), :mod:`~bftfs.cli.generations`
(``generation``), :mod:`~bftfs.cli.growing` (``group``), :mod:`~bftfs.cli.completion`.

One grammar (issue 67): a command that does several things takes them as actions, each its
own parser (``bftfs client add NAME``, ``bftfs generation show --json``); the identity a
command acts as is ``--as CLIENT``; commands that print data take ``--json``.  This module
assembles them and turns errors into the exit codes of :mod:`bftfs.cli.common`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from bftfs import STORE_FORMAT, WIRE_VERSION, __version__
from bftfs import local as localmod
from bftfs.cli import (
    cluster,
    completion,
    generations,
    growing,
    history,
    keys,
    mounts,
    nodes,
    quorums,
    status,
    units,
    views,
)
from bftfs.cli.common import (
    EXIT_CLUSTER,
    EXIT_CONFIG,
    EXIT_HISTORY,
    EXIT_INTERRUPTED,
    EXIT_KEY,
    EXIT_USAGE,
    QuietError,
    exit_codes_text,
)
from bftfs.config import ConfigError
from bftfs.crypto import KeyFileError

#: The command groups' parsers, in the order ``bftfs --help`` lists them.
_COMMANDS = (
    cluster.add_init,
    cluster.add_bundle,
    cluster.add_up,
    cluster.add_down,
    status.add_status,
    mounts.add_mount,
    history.add_commands,
    nodes.add_verify,
    cluster.add_client,
    views.add_view,
    generations.add_generation,
    growing.add_group,
    cluster.add_rotate_key,
    keys.add_keys,
    mounts.add_umount,
    nodes.add_node,
    quorums.add_quorums,
    units.add_unit,
    completion.add_completion,
)

#: History commands whose bad arguments (a WHEN, a PATH) are usage errors (exit 2).
_HISTORY_COMMANDS = ("log", "cat", "restore", "diff", "changes", "revert")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bftfs",
        description="bftfs: a Byzantine fault-tolerant file system (PASIS blocks, Q/U metadata).",
        epilog=exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=version_line())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return p


#: Options whose value may be an age like ``-10m`` (argparse would take it for an option).
_WHEN_OPTIONS = ("--at", "--since", "--until", "--from", "--to")


def _join_ages(argv: list[str]) -> list[str]:
    """``--at -10m`` -> ``--at=-10m`` (``--at=-10m`` works as it is)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _WHEN_OPTIONS and len(arg) > 1 and arg[0] == "-" and arg[1].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _quiet_broken_pipe() -> int:
    """Output piped into a reader that stopped (``bftfs log ... | head``): end quietly,
    as Unix tools do, instead of a traceback when Python flushes stdout at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def version_line() -> str:
    """``bftfs --version``: the package, and the formats it speaks and stores (a node and a
    client of different wire versions cannot talk; docs/operations.md, "Upgrades")."""
    return f"bftfs {__version__} (wire {WIRE_VERSION}, store format {STORE_FORMAT})"


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer a Tab of the shell code ``bftfs completion`` prints (argcomplete sets
    ``_ARGCOMPLETE`` for it; this exits): argcomplete is imported only then."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _complete(parser)
    args = parser.parse_args(_join_ages(sys.argv[1:] if argv is None else argv))
    if args.command != "node":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except QuietError as e:
        print(f"bftfs: {e}", file=sys.stderr)
        return e.exitcode
    except ConfigError as e:
        print(f"bftfs: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyFileError as e:
        print(f"bftfs: {e}", file=sys.stderr)
        return EXIT_KEY
    except localmod.ClusterError as e:
        print(f"bftfs: {e}", file=sys.stderr)
        return EXIT_CLUSTER
    except Exception as e:
        if _interrupted(e):
            return _exit_interrupted()
        code = _history_exit_code(e, args.command)
        if code is None:
            raise
        return code
    except (KeyboardInterrupt, BaseExceptionGroup) as e:
        if not _interrupted(e):
            raise
        return _exit_interrupted()


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` is Ctrl-C: a KeyboardInterrupt, or one a trio nursery wrapped in an
    exception group beside the cancellations of its other tasks."""
    if isinstance(e, KeyboardInterrupt):
        return True
    return isinstance(e, BaseExceptionGroup) and e.subgroup(KeyboardInterrupt) is not None


def _exit_interrupted() -> int:
    """Ctrl-C: one line and 130 (128 + SIGINT), as shells and restic do, not a traceback
    and never a code the command gives its own meaning to (``verify``'s 1: repaired)."""
    print("bftfs: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _history_exit_code(e: Exception, command: str) -> int | None:
    """The exit code of a history command's error, its message printed: answers the past
    cannot give, bad WHENs, an unreachable cluster; None for anything else (a bug)."""
    from bftfs.cli.when import WhenError
    from bftfs.fs.history import PastError
    from bftfs.outcome import ClusterUnavailable

    if isinstance(e, PastError):
        print(f"bftfs: {e}", file=sys.stderr)
        return EXIT_HISTORY
    if isinstance(e, WhenError | ValueError) and command in _HISTORY_COMMANDS:
        print(f"bftfs: {e}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(e, ClusterUnavailable):
        print(f"bftfs: the cluster does not answer: {e}", file=sys.stderr)
        return EXIT_CLUSTER
    return None
