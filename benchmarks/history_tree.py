"""History commands on a whole tree (issue 36): how long ``bftfs diff``, ``changes``,
``restore`` and ``revert --dry-run`` take on a tree of ``--files`` files.

A fresh 6-node cluster (``--engine``: Q/U or FaB metadata; real ``bftfs node`` processes,
no fsync, retention long enough to keep everything) and one FUSE mount. The script writes
``--files`` files (seeded sizes, 100 B to 20 KiB: inline under the default 32 KiB limit)
in directories of 50, notes the moment T0, then changes a tenth of them (rewrites),
removes a twentieth, adds a twentieth and renames a fiftieth, notes T1 (each phase ends
with an ``fsync`` of every directory and each rewritten file, so what directory write-back
holds for up to ``commit=`` seconds is on the nodes before the moment is noted), waits for
the nodes to finish the background work the writes left (lazy verification: under a fifth
of a core), and times each command (the whole command: Python start-up, connecting,
walking the histories, writing; the read-only ones ``--runs`` times, the median) with
absolute times ``@T0``/``@T1``:

- ``bftfs diff fs:/tree --from @T0 --to @T1``
- ``bftfs changes fs:/tree --since @T0 --until @T1 --json``
- ``bftfs revert MNT/tree --client client0 --since @T0 --dry-run``
- ``bftfs restore fs:/tree --at @T0 --to MNT/restored`` (into the mount, as a user would),
  then checks the restored tree byte for byte against what was written before T0;
- ``bftfs revert MNT/tree --client client0 --since @T0`` (every change after T0 was
  client0's: the tree goes back to T0, checked byte for byte).

``--before DIR`` times every command also with the package in DIR (another version's
client, e.g. ``git archive`` of main), on the same cluster in the same run: the read-only
commands alternate between the two, each restores to a directory of its own, and each
reverts a tree of its own (a second tree, ``tree-before``, is written and changed alike).

Each command run is reported with its CPU seconds, the nodes' CPU seconds, the requests
the nodes served by kind and the history reads' statistics (the commands log them at
INFO).  ``--profile DIR`` runs each command's first run under cProfile
(``DIR/COMMAND.prof``), ``--pyspy DIR`` under py-spy with node 0 recorded too;
``--compare DIR`` runs ``diff`` and ``changes`` also with the package in DIR (another
version's client) and checks they print the same; ``--json FILE`` writes the figures.
Output is not a terminal, so the commands print no progress.  Usage::

    .venv/bin/python benchmarks/history_tree.py               # 1000 files
    .venv/bin/python benchmarks/history_tree.py --files 300
    .venv/bin/python benchmarks/history_tree.py --files 300 --engine fab
    .venv/bin/python benchmarks/history_tree.py --before /tmp/main --json FILE
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from profiling import cpu_seconds

from bftfs.policy import RetentionPolicy
from bftfs.testing.mounts import Mount, fsync_paths
from bftfs.testing.processes import ProcessCluster

PER_DIR = 50


#: Where each command's first run writes its cProfile statistics (``--profile DIR``).
PROFILE: list[Path] = []


#: py-spy recordings of each command's first run and of node 0 meanwhile (``--pyspy DIR``).
PYSPY: list[Path] = []

#: Runs a ``bftfs`` command with its history reads' statistics logged (``cli/when.py``
#: logs them at INFO; the command's own logging stays at WARNING otherwise).
_RUNNER = (
    "import logging, sys; from bftfs.cli.main import main; "
    "logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s'); "
    "logging.getLogger('bftfs.cli.when').setLevel(logging.INFO); sys.argv[0] = 'bftfs'; "
    "sys.exit(main())"
)


@dataclass
class Cost:
    """What one command cost: wall seconds, CPU seconds of the command and of the nodes,
    and its history reads' statistics (``Past.statistics``)."""

    wall_s: float
    cpu_s: float
    nodes_cpu_s: float
    stats: str
    #: Requests the nodes served meanwhile, by kind (all nodes; ``req.KIND`` counters,
    #: batch items counted as their own kind too).
    node_requests: dict[str, int]
    #: The nodes' object-sync counters meanwhile (``qu.syncs@NODE``,
    #: ``qu.sync_shared@NODE``, ...: node/qu_inflight.py).
    node_syncs: dict[str, int]


#: The cost of every command run, in order.
COSTS: list[tuple[str, Cost]] = []


def _bftfs(
    config: Path, *args: str, pc: ProcessCluster | None = None, code: str | None = None
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Seconds one ``bftfs`` command took, and what it printed (profiled, the first run of
    each command, with ``--profile`` or ``--pyspy``); its :class:`Cost` goes to COSTS
    (named ``COMMAND@before`` when run with the package in ``code``)."""
    name = f"{args[0]}{'-dry' if '--dry-run' in args else ''}{'' if code is None else '@before'}"
    cmd = [sys.executable, "-c", _RUNNER, *args, "--config", str(config)]
    spies: list[subprocess.Popen[bytes]] = []
    if PROFILE:
        out = PROFILE[0] / f"{name}.prof"
        if not out.exists():
            cmd[1:3] = ["-m", "cProfile", "-o", str(out), "-c", _RUNNER]
    elif PYSPY and not (PYSPY[0] / f"{name}-client.txt").exists():
        spy = str(Path(sys.executable).parent / "py-spy")
        rec = [spy, "record", "-r", "200", "--format", "raw", "--nonblocking"]
        if pc is not None and pc.pid(0) is not None:
            node_out = str(PYSPY[0] / f"{name}-node0.txt")
            spies.append(subprocess.Popen([*rec, "-o", node_out, "--pid", str(pc.pid(0))]))
        cmd = [*rec, "-o", str(PYSPY[0] / f"{name}-client.txt"), "--", *cmd]
    reqs0 = _node_requests(pc) if pc is not None else Counter()
    nodes0 = _nodes_cpu(pc) if pc is not None else 0.0
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = None if code is None else {**os.environ, "PYTHONPATH": code}
    done = subprocess.run(cmd, capture_output=True, timeout=3600, env=env, cwd=code)
    took = time.perf_counter() - t0
    if spies or PYSPY:  # py-spy's own messages go to the same standard output
        kept = [x for x in done.stdout.splitlines(keepends=True) if not x.startswith(b"py-spy>")]
        done.stdout = b"".join(kept)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    nodes = _nodes_cpu(pc) - nodes0 if pc is not None else 0.0
    reqs = _node_requests(pc) - reqs0 if pc is not None else Counter()
    for s in spies:
        s.send_signal(signal.SIGINT)
        s.wait(timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode()}")
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    logged = ("history:", "writes:", "phase:")
    stats = [x for x in done.stderr.decode().splitlines() if any(w in x for w in logged)]
    served = {k: v for k, v in reqs.items() if not k.startswith("stat:")}
    syncs = {k[5:]: v for k, v in reqs.items() if k.startswith("stat:") and v}
    cost = Cost(round(took, 2), round(cpu, 2), round(nodes, 2), " ".join(stats), served, syncs)
    COSTS.append((name, cost))
    print(f"  {name}: {COSTS[-1][1]}", flush=True)
    return took, done


def _build(root: Path, files: int, rng: random.Random) -> dict[str, bytes]:
    """``files`` files under ``root`` in directories of :data:`PER_DIR`; their contents."""
    written: dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i // PER_DIR:03d}/f{i:05d}.txt"
        data = rng.randbytes(rng.randint(100, 20_000))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        written[rel] = data
    _reach_the_nodes(root)
    return written


def _reach_the_nodes(root: Path) -> None:
    """``fsync`` every directory under ``root`` and ``root``'s own: the creates, removals
    and renames directory write-back holds (up to ``commit=`` seconds, docs/fs.md) reach
    the nodes, and so the history, before the moment the script notes next."""
    for d in sorted({p for p in root.rglob("*") if p.is_dir()}, reverse=True):
        fsync_paths(d)
    fsync_paths(root)
    fsync_paths(root.parent)


def _rewrite(path: Path, data: bytes) -> None:
    """A file written again and ``fsync``ed (a held file's writes wait for ``commit=``)."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _change(root: Path, before: dict[str, bytes], rng: random.Random) -> int:
    """Rewrite a tenth, remove a twentieth, add a twentieth, rename a fiftieth; how many
    paths changed."""
    names = sorted(before)
    rng.shuffle(names)
    n = len(names)
    rewrite, remove = names[: n // 10], names[n // 10 : n // 10 + n // 20]
    rename = names[n // 10 + n // 20 : n // 10 + n // 20 + n // 50]
    for rel in rewrite:
        _rewrite(root / rel, rng.randbytes(rng.randint(100, 20_000)))
    for rel in remove:
        (root / rel).unlink()
    for rel in rename:
        (root / rel).rename(root / (rel + ".moved"))
    for i in range(n // 20):
        (root / f"d{i % max(1, n // PER_DIR):03d}/new{i:05d}.txt").write_bytes(rng.randbytes(500))
    _reach_the_nodes(root)
    return len(rewrite) + len(remove) + len(rename) + n // 20


def _nodes_cpu(pc: ProcessCluster) -> float:
    """CPU seconds the node processes used so far."""
    pids = [p for p in (pc.pid(i) for i in range(pc.config.n)) if p is not None]
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def _node_requests(pc: ProcessCluster) -> Counter[str]:
    """Requests the nodes served so far, by kind, summed over the nodes (their status),
    and each node's ``qu.sync*`` and ``rejoin.*`` counters (as ``stat:NAME@NODE``)."""
    import trio

    from bftfs import local

    got: Counter[str] = Counter()
    for s in trio.run(local.query_status, pc.config):
        for k, v in ((s.stats or {}).get("requests") or {}).items():
            if k.startswith("req."):
                got[k[4:]] += int(v)
            elif k.startswith(("qu.sync", "rejoin.")):  # object syncs, catch-ups after a cut-off
                got[f"stat:{k}@{s.id}"] += int(v)
    return got


def _settle(pc: ProcessCluster, deadline_s: float = 180.0) -> float:
    """Wait until the nodes are done with what the writes left them (lazy verification,
    sync): less than a fifth of a core over one second, or ``deadline_s``; seconds
    waited.  The commands are timed on a quiet cluster, so that before and after compare
    the commands and not how much background work overlapped them."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        used = _nodes_cpu(pc)
        time.sleep(1.0)
        if _nodes_cpu(pc) - used < 0.2:
            break
    return time.perf_counter() - t0


def _timed(
    config: Path, pc: ProcessCluster, runs: int, codes: list[str | None], *args: str
) -> dict[str | None, tuple[list[float], bytes, list[str]]]:
    """Per code (None: this package; a directory: ``--before``'s), the seconds of each of
    ``runs`` runs of a read-only command that succeeded, its output and why the others
    failed.  With two codes the runs alternate, the first of each pair changing from run
    to run, so that both meet the same machine."""
    took: dict[str | None, list[float]] = {c: [] for c in codes}
    out: dict[str | None, bytes] = dict.fromkeys(codes, b"")
    failed: dict[str | None, list[str]] = {c: [] for c in codes}
    for i in range(runs):
        for code in codes if i % 2 == 0 else codes[::-1]:
            try:
                s, done = _bftfs(config, *args, pc=pc, code=code)
            except SystemExit as e:  # (under load, a history round may miss nodes: exit 7)
                failed[code].append(str(e).strip().splitlines()[-1])
                continue
            took[code].append(s)
            out[code] = done.stdout
    return {c: (took[c], out[c], failed[c]) for c in codes}


def _compare(
    config: Path, pc: ProcessCluster, at0: str, at1: str, args: argparse.Namespace
) -> bool:
    """Whether ``diff`` and ``changes`` print the same with this package and with the one
    in ``--compare`` (same cluster, same moments; ``changes`` without its times, which
    are medians over the nodes that answered first and so vary between any two runs)."""
    same = True
    for cmd in (
        ("diff", "fs:/tree", "--from", at0, "--to", at1),
        ("changes", "fs:/tree", "--since", at0, "--until", at1, "--json"),
    ):
        mine = _bftfs(config, *cmd, pc=pc)[1].stdout
        theirs = _bftfs(config, *cmd, pc=pc, code=str(Path(args.compare).resolve()))[1].stdout
        if cmd[0] == "changes":  # a version's time is the median of the nodes that
            mine, theirs = _untimed(mine), _untimed(theirs)  # answered: it varies by run
        print(f"{cmd[0]}: the same output as {args.compare}'s: {mine == theirs}")
        if mine != theirs and args.json:
            for who, out in (("mine", mine), ("theirs", theirs)):
                Path(f"{args.json}.{cmd[0]}.{who}").write_bytes(out)
        same = same and mine == theirs
    return same


def _untimed(out: bytes) -> bytes:
    """``changes --json`` output without the times: each change's path, client and what
    changed, sorted (changes close in time may come in either order)."""
    rows = json.loads(out)["changes"]
    return json.dumps(sorted([r["path"], r["client"], r["changes"]] for r in rows)).encode()


def _same_tree(root: Path, want: dict[str, bytes]) -> bool:
    got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return got == want


def _build_draws(rng: random.Random, files: int) -> None:
    """Draw what :func:`_build` draws, so that a second tree's changes are the first's."""
    for _ in range(files):
        rng.randbytes(rng.randint(100, 20_000))


def _what(key: str, out: bytes) -> str:
    """What a read-only command's output says, in a few words."""
    if key == "changes":
        return f"{len(json.loads(out)['changes'])} changes"
    if key == "diff":
        return f"{len(out.splitlines())} lines"
    return [x for x in out.decode().splitlines() if x.endswith("conflicts")][-1]


def _show(median: float, runs: list[float]) -> str:
    return f"{median:.1f} s (median of {', '.join(f'{s:.1f}' for s in runs)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000, help="files in the tree (1000)")
    ap.add_argument("--seed", type=int, default=36, help="random seed (36)")
    ap.add_argument(
        "--engine", choices=("qu", "fab"), default="qu", help="the metadata engine (qu)"
    )
    ap.add_argument("--runs", type=int, default=3, help="runs of each read-only command (3)")
    ap.add_argument("--profile", metavar="DIR", help="cProfile each command's first run here")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    ap.add_argument("--pyspy", metavar="DIR", help="py-spy each command's first run here")
    ap.add_argument(
        "--compare",
        metavar="DIR",
        help="also run diff and changes with the bftfs package in DIR (another version's "
        "client, e.g. a git archive of main) and check that they print the same",
    )
    ap.add_argument(
        "--before",
        metavar="DIR",
        help="time every command also with the bftfs package in DIR (e.g. a git archive of "
        "main), alternating with this package's on the same cluster; a second tree is "
        "written for the second revert",
    )
    ap.add_argument(
        "--writes-only",
        action="store_true",
        help="time only restore and revert (not diff, changes and revert --dry-run)",
    )
    ap.add_argument(
        "--after-first",
        action="store_true",
        help="with --before: restore with this package first (and revert second)",
    )
    args = ap.parse_args(argv)
    # Stopped (a background job ignores SIGINT): the cluster and mount are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    if args.profile:
        PROFILE.append(Path(args.profile))
        PROFILE[0].mkdir(parents=True, exist_ok=True)
    if args.pyspy:
        PYSPY.append(Path(args.pyspy))
        PYSPY[0].mkdir(parents=True, exist_ok=True)
    before_code = str(Path(args.before).resolve()) if args.before else None
    codes: list[str | None] = [before_code, None] if before_code else [None]
    figures: dict[str, object] = {
        "files": args.files,
        "seed": args.seed,
        "runs": args.runs,
        "engine": args.engine,
    }
    with tempfile.TemporaryDirectory(prefix="bftfs-histtree-", dir="/var/tmp") as tmp:
        home = Path(tmp) / "c"
        keep = RetentionPolicy(keep_seconds=86400.0, keep_versions=2)
        with ProcessCluster(home, durable=False, retention=keep, engine=args.engine) as pc:
            config = home / "cluster.toml"
            with Mount(pc.config, Path(tmp) / "mnt", client="client0") as m:
                # One tree per code for the reverts (each reverts its own), written and
                # changed alike (the same seed).
                trees = {c: m.mountpoint / ("tree" if c is None else "tree-before") for c in codes}
                t0 = time.perf_counter()
                before = {c: _build(trees[c], args.files, random.Random(args.seed)) for c in codes}
                print(
                    f"wrote {args.files} files x {len(codes)} in {time.perf_counter() - t0:.1f} s"
                )
                time.sleep(1.0)  # T0 lies clearly between the two phases' versions
                t0_ns = time.time_ns()
                time.sleep(1.0)
                for c in codes:
                    rng = random.Random(args.seed)
                    _build_draws(rng, args.files)
                    changed = _change(trees[c], before[c], rng)
                time.sleep(1.0)
                t1_ns = time.time_ns()
                at0, at1 = f"@{t0_ns / 1e9:.6f}", f"@{t1_ns / 1e9:.6f}"
                print(f"nodes settled after {_settle(pc):.0f} s")
                figures["load_average"] = os.getloadavg()[0]
                print(f"load average (the machine's): {figures['load_average']:.1f}")
                tree, want = trees[None], before[None]
                reads = {
                    "diff": ("diff", "fs:/tree", "--from", at0, "--to", at1),
                    "changes": ("changes", "fs:/tree", "--since", at0, "--until", at1, "--json"),
                    "revert_dry_run": (
                        "revert", str(tree), "--client", "client0", "--since", at0, "--dry-run",
                    ),
                }  # fmt: skip
                for key, cmd in () if args.writes_only else reads.items():
                    got = _timed(config, pc, args.runs, codes, *cmd)
                    for code, (all_s, out, failed) in got.items():
                        label = "" if code is None else "_before"
                        figures[f"{key}{label}_s"] = all_s
                        if failed:
                            figures[f"{key}{label}_failed"] = failed
                            print(f"bftfs {key}{label}: {len(failed)} runs failed: {failed[-1]}")
                        if all_s:
                            med = statistics.median(all_s)
                            print(f"bftfs {key}{label}: {_show(med, all_s)} ({_what(key, out)})")
                    if key == "diff":
                        print(f"({changed} paths changed)")
                if args.compare:
                    figures["same_output_as_compared"] = _compare(config, pc, at0, at1, args)
                for code in codes[::-1] if args.after_first else codes:
                    label = "" if code is None else "_before"
                    dest = m.mountpoint / f"restored{label}"
                    print(f"nodes settled after {_settle(pc):.0f} s")  # (the last one's work)
                    cpu0 = _nodes_cpu(pc)
                    took, done = _bftfs(
                        config, "restore", "fs:/tree", "--at", at0, "--to", str(dest), pc=pc,
                        code=code,
                    )  # fmt: skip
                    figures[f"restore{label}_nodes_cpu_s"] = round(_nodes_cpu(pc) - cpu0, 2)
                    same = _same_tree(dest, want)
                    print(f"bftfs restore{label}: {took:.1f} s ({done.stdout.decode().strip()})")
                    figures[f"restore{label}_s"] = took
                    print(f"restored tree identical to the tree at T0: {same}")
                    if not same:
                        return 1
                for code in codes if args.after_first else codes[::-1]:
                    label = "" if code is None else "_before"
                    print(f"nodes settled after {_settle(pc):.0f} s")
                    took, done = _bftfs(
                        config, "revert", str(trees[code]), "--client", "client0", "--since",
                        at0, pc=pc, code=code,
                    )  # fmt: skip
                    same = _same_tree(trees[code], before[code])
                    summary = done.stdout.decode().strip().splitlines()[-1]
                    print(f"bftfs revert{label}: {took:.1f} s ({summary})")
                    figures[f"revert{label}_s"] = took
                    print(f"reverted tree identical to the tree at T0: {same}")
                    if not same:
                        return 1
                figures["load_average_end"] = os.getloadavg()[0]
                print(f"load average at the end: {figures['load_average_end']:.1f}")
    figures["costs"] = [[name, asdict(c)] for name, c in COSTS]
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
