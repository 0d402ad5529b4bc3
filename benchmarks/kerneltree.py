"""A developer's day on a real tree, on every target side by side (issue 64).

The metadata-heavy workload of a kernel developer, on the Linux 6.1 source Debian ships
(``linux-source-6.1``: ``/usr/src/linux-source-6.1.tar.xz``), each phase timed:

1. **untar**: ``tar -xf`` of the tree (tens of thousands of small files and directories);
2. **find**: ``find`` over the tree (every entry listed, counted against the tarball's);
3. **grep**: ``grep -r -l`` of a string in every file (every file read once);
4. **du**: ``du -s`` (every entry stat'ed);
5. **git**: ``git init``, ``git add -A`` (every file read, hashed, an object written for
   each), ``git commit``;
6. **rm**: ``rm -rf`` of the tree and its repository.

The tarball is unpacked once into an uncompressed tar in ``benchmarks/.cache`` (xz's CPU
is not the file system's), of the whole tree or of one top-level directory (``--subset
kernel``, ``--subset fs``), so a run fits minutes on a 2-core machine.  Targets are
interleaved per repetition (``toolbench.measure``: all phases on one target, then the
next), medians over repetitions; every phase's CPU of the file system's client and server
processes is counted (``costs.py``), per file of the tree.

Results: ``benchmarks/results/kerneltree-<short|full>.{json,md,png}``, seconds per phase
with the ratio to the local disk's (lower is better).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import toolbench  # noqa: E402
from common import Progress  # noqa: E402
from toolbench import Case, ToolError  # noqa: E402

PACKAGE = "linux-source-6.1"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
#: What ``grep -r -l`` looks for: a string few files hold, so grep reads nearly every
#: file to its end (``-l`` stops reading a file at its first match).
PATTERN = "Byzantine"
#: (key, label) of each phase, in the order they run: each needs the one before.
PHASES = (
    ("untar", "untar (tar -xf)"),
    ("find", "find"),
    ("grep", f"grep -r {PATTERN}"),
    ("du", "du -s"),
    ("git", "git init, add -A, commit"),
    ("rm", "rm -rf"),
)
#: git with no configuration of this machine's, the same identity everywhere, and no
#: ownership check (bindfs and the FUSE peers may show other owners).
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
GIT_CONFIG = (
    "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false",
    "-c", "safe.directory=*", "-c", "init.defaultBranch=main", "-c", "gc.auto=0",
)  # fmt: skip


# The tree ---------------------------------------------------------------------------------


def check_subset(subset: str | None) -> str | None:
    """``kernel`` from ``kernel/``; None for the whole tree (``None``, ``all``).

    Raises:
        SystemExit: not one top-level directory's name.
    """
    if subset is None or subset.strip("/") in ("", "all"):
        return None
    name = subset.strip("/")
    if "/" in name or name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SystemExit(f"--subset: one top-level directory of the tree, e.g. kernel: {subset!r}")
    return name


def cache_name(tarball: Path, subset: str | None) -> str:
    """The cached tar's file name: the tarball's name and size, and the subset."""
    stem = tarball.name.removesuffix(".tar.xz").removesuffix(".tar")
    return f"{stem}-{tarball.stat().st_size}-{subset or 'all'}.tar"


def top_directory(tarball: Path) -> str:
    """The tarball's top-level directory (``linux-source-6.1``), from its first member."""
    with tarfile.open(tarball) as tf:
        first = tf.next()
    if first is None:
        raise ToolError(f"{tarball} is empty")
    return first.name.split("/", 1)[0]


def prepare(tarball: Path, subset: str | None, cache: Path, progress: Progress) -> Path:
    """The uncompressed tar of the tree (or its subset), made once into ``cache``."""
    out = cache / cache_name(tarball, subset)
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    progress(f"unpacking {tarball} ({subset or 'the whole tree'}) into {out} once")
    tmp = Path(tempfile.mkdtemp(prefix="kerneltree-", dir=cache))
    try:
        if subset is None:
            with open(tmp / "t.tar", "wb") as f:
                subprocess.run(["xz", "-dc", str(tarball)], stdout=f, check=True)
        else:
            top = top_directory(tarball)
            subprocess.run(["tar", "-xJf", str(tarball), "-C", str(tmp), f"{top}/{subset}"],
                           check=True)  # fmt: skip
            subprocess.run(["tar", "-cf", str(tmp / "t.tar"), "-C", str(tmp), f"{top}/{subset}"],
                           check=True)  # fmt: skip
        (tmp / "t.tar").replace(out)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"cannot unpack {subset or 'the tree'} from {tarball}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tree_counts(tar: Path) -> dict[str, Any]:
    """The tree's top directory, its entries (what ``find`` lists, the top included), its
    regular files and their bytes."""
    entries, files, size, tops = 0, 0, 0, set()
    with tarfile.open(tar) as tf:
        for m in tf:
            parts = m.name.rstrip("/").split("/")
            tops.add(parts[0])
            entries += 1
            if m.isfile():
                files += 1
                size += m.size
    if len(tops) != 1:
        raise ToolError(f"{tar} has {len(tops)} top-level entries, not one")
    top = tops.pop()
    # The tar of a subset does not list the top directory itself; find does.
    with tarfile.open(tar) as tf:
        listed = {m.name.rstrip("/") for m in tf if m.isdir()}
    for d in {"/".join(n.split("/")[:k]) for n in listed for k in range(1, n.count("/") + 1)}:
        entries += d not in listed
    return {"top": top, "entries": entries, "files": files, "bytes": size}


# Phases -----------------------------------------------------------------------------------


def phase_commands(key: str, tar: Path, tree: Path, top: str) -> list[list[str]]:
    """The command lines of phase ``key``: the tree unpacked under ``tree``, its root
    ``tree/top`` (every phase after untar runs with ``tree`` as its working directory)."""
    if key == "untar":
        return [["tar", "-xf", str(tar), "-C", str(tree)]]
    if key == "find":
        return [["find", top]]
    if key == "grep":
        return [["grep", "-r", "-l", "-F", PATTERN, top]]
    if key == "du":
        return [["du", "-s", top]]
    if key == "git":
        g = ["git", *GIT_CONFIG, "-C", top]
        return [[*g, "init", "-q"], [*g, "add", "-A"], [*g, "commit", "-q", "-m", "tree"]]
    if key == "rm":
        return [["rm", "-rf", top]]
    if key == "idle":
        return []
    raise ValueError(f"unknown phase {key!r}")


def run_commands(cmds: Sequence[list[str]], cwd: Path, cap: float) -> tuple[float, list[str]]:
    """Run ``cmds`` one after the other in ``cwd``: the seconds they took together and each
    one's stdout.  grep's exit 1 (nothing found) is not a failure.

    Raises:
        ToolError: a command failed or the phase ran past ``cap`` seconds.
    """
    outs: list[str] = []
    t0 = time.perf_counter()
    for cmd in cmds:
        left = cap - (time.perf_counter() - t0)
        try:
            r = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=max(left, 1.0),
                               env={**os.environ, **GIT_ENV})  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise ToolError(f"{cmd[0]} ran past the {cap:.0f} s cap") from e
        if r.returncode != 0 and not (cmd[0] == "grep" and r.returncode == 1):
            raise ToolError(f"{' '.join(cmd[:3])} exited {r.returncode}: {r.stderr[-400:]}")
        outs.append(r.stdout)
    return time.perf_counter() - t0, outs


def check_phase(key: str, outs: list[str], counts: dict[str, Any]) -> dict[str, Any]:
    """What a phase printed, checked against the tree where it can be: ``find`` must list
    every entry of the tarball, ``du`` must report at least the files' bytes.

    Raises:
        ToolError: the file system showed a different tree.
    """
    if key == "find":
        seen = len(outs[0].splitlines())
        if seen != counts["entries"]:
            raise ToolError(f"find listed {seen} entries, the tree has {counts['entries']}")
        return {"entries": seen}
    if key == "grep":
        return {"matching_files": len(outs[0].splitlines())}
    if key == "du":
        kib = int(outs[0].split()[0])
        return {"du_kib": kib}
    return {}


def run_case(case: Case, where: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One phase on the tree shared by this target's phases (``where``'s parent)."""
    tree = where.parent / "tree"
    tree.mkdir(exist_ok=True)
    counts = args.counts
    if case.key != "untar" and not (tree / counts["top"]).is_dir():
        raise ToolError("no tree (its untar failed)")
    cmds = phase_commands(case.key, args.tar, tree, counts["top"])
    if case.key == "idle":  # the tree left alone: what keeping its leases costs
        time.sleep(args.idle)
    seconds, outs = run_commands(cmds, tree, args.cap)
    rec = {"value": seconds, "units": counts["files"], **check_phase(case.key, outs, counts)}
    if case.key == "rm" and any(tree.iterdir()):
        raise ToolError(f"rm -rf left {sorted(p.name for p in tree.iterdir())[:5]}")
    return rec


def cases(idle: float = 0.0) -> list[Case]:
    """The phases; with ``idle`` seconds, an idle phase after the untar (issue 62: a run
    that outlives a lease term, as a loaded machine's does, meets its leases' upkeep)."""
    out = [Case(key, label, "s", "file") for key, label in PHASES]
    if idle > 0:
        out.insert(1, Case("idle", f"idle {idle:g} s (the tree left alone)", "s", "file"))
    return out


# Command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="The kernel tree workload (untar, find, grep -r, du, git init/add/commit, "
        "rm -rf) on the local disk, bindfs, the peers and bftfs.",
        epilog="Short by default: --subset kernel, b = 1, one run.  --full: the whole tree, "
        "b = 1,2, 3 runs.",
    )
    ap.add_argument(
        "--subset",
        help="one top-level directory of the tree, e.g. kernel or fs; 'all' for the whole "
        "tree (short: kernel, full: all)",
    )
    ap.add_argument("--tarball", type=Path, default=TARBALL, help=f"default {TARBALL}")
    ap.add_argument(
        "--cache",
        type=Path,
        default=common.CACHE_DIR,
        help="where the uncompressed tar is kept between runs (default benchmarks/.cache)",
    )
    ap.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="seconds the tree is left alone after the untar (an extra phase; its costs "
        "are the leases' upkeep): a run outliving a lease term, as on a loaded machine",
    )
    toolbench.add_arguments(ap)
    args = toolbench.finish_arguments(ap.parse_args(argv))
    args.subset = check_subset(args.subset or ("all" if args.full else "kernel"))
    return args


def description(args: argparse.Namespace) -> str:
    c = args.counts
    what = f"its {args.subset}/ directory" if args.subset else "the whole tree"
    return (
        f"The Linux 6.1 source ({PACKAGE}), {what}: {c['files']} files, {c['entries']} "
        f"entries, {c['bytes'] / 2**20:.0f} MiB; each phase's seconds (lower is better), "
        "the phases in order on one tree per target and run (untar from an uncompressed "
        f"tar; grep -r -l -F {PATTERN}; git init, add -A and commit timed together); "
        "costs per file of the tree."
    )


def main(argv: list[str] | None = None) -> int:
    """Every phase on every target; 0 when every target not skipped ran every phase.  A
    missing tarball is a skip (exit 0) with the reason printed; nothing is written."""
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("kerneltree", args.quiet)
    if not args.tarball.exists():
        progress(f"kerneltree skipped: {args.tarball} is missing (Debian package {PACKAGE}; "
                 "make bench-setup)")  # fmt: skip
        return 0
    for tool in ("tar", "xz", "find", "grep", "du", "git"):
        if shutil.which(tool) is None:
            progress(f"kerneltree skipped: {tool} is not installed")
            return 0
    args.tar = prepare(args.tarball, args.subset, args.cache, progress)
    args.counts = tree_counts(args.tar)
    progress(f"{args.counts['files']} files of the tree")
    config = {"subset": args.subset, "tree": args.counts, "idle": args.idle}
    return toolbench.run_cases(
        "kerneltree", PACKAGE, PACKAGE, "Kernel tree", description(args), args, cases(args.idle),
        run_case, config, progress,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
