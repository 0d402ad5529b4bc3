"""The Modified Andrew Benchmark on bftfs, the local disk and bindfs, side by side.

Five phases on a real C source tree that this team did not write: the source distribution
of lupa 2.8 from PyPI (981 files, 32 MB, bundling the Lua 5.1-5.5 and LuaJIT sources),
downloaded once from the package index, checked against its SHA-256 and cached in
``benchmarks/.cache/``.  The short run uses its ``third-party/lua54`` directory (111
files, 1.7 MB: the scale of Andrew's original tree), ``--full`` the whole distribution,
``--tree`` any tree:

1. ``mkdir``: create the tree's directories in the target;
2. ``copy``: copy every file into it (contents and mode, like ``cp``);
3. ``stat``: walk the copy and ``lstat`` every entry (like ``ls -lR``);
4. ``read``: read every byte of every file (like ``grep -r``), checking each file's CRC
   against the source so a wrong byte is an error, not a fast run;
5. ``compile``: compile and link a program inside the copy (by default the Lua 5.4
   interpreter from ``third-party/lua54``: every ``l*.c`` but ``lua.c``, ``luac.c`` and
   ``onelua.c`` into objects with ``cc -O2``, then ``lua`` linked with ``-lm -ldl``).

Targets (``benchmarks/common.py``): ``local`` (a directory on the local disk), ``bindfs``
(the same through a C FUSE pass-through), ``glusterfs`` (a GlusterFS replica-3 volume on
three local bricks, set up and torn down for each run: ``benchmarks/gluster.py``) and
``bftfs`` on a fresh cluster (``t = b = 1``; ``--groups G``: ``G`` groups of six, the
layout placing objects and blocks, docs/layout.md), plus bftfs with one node SIGKILLed
before the mount (node 0: the first every client contacts, the pessimistic choice).  Repetitions are
interleaved (A B C D A B C D ...), each on a freshly set-up target; the report gives
per-phase medians, min-max, and the ratios glusterfs/local, bftfs/local, bftfs/bindfs and
bftfs/glusterfs.  ``--profile`` adds one unmeasured bftfs repetition under py-spy (mount
daemon and one node, phase by phase) and reports where the time goes.

Results: ``benchmarks/results/andrew-<short|full>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import html.parser
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import costs  # noqa: E402
import profiling  # noqa: E402
import variants  # noqa: E402
from common import Progress, Site, TargetSpec  # noqa: E402

PHASES = ("mkdir", "copy", "stat", "read", "compile")

# The default tree: a C-heavy source distribution from PyPI, pinned by version and digest.
LUPA_VERSION = "2.8"
LUPA_SHA256 = "d8022641b9ec8ecf2c5ecbe9f47e5a70e0b87c4b5ae921b92cb02a638e0acd08"

# Compile and link Lua 5.4 (about 30 C files) the way its own makefile would, one compiler
# process per file so the phase is a stream of small reads and writes, as in Andrew's
# original "make" phase.  Run with sh -c from the root of the copied tree; @LUA@ is the
# Lua 5.4 directory relative to that root.
BUILD_TEMPLATE = (
    "cd @LUA@ && "
    'CFLAGS="-O2 -std=gnu99 -DLUA_USE_LINUX" && '
    'objs="" && '
    "for f in l*.c; do "
    "case $f in lua.c|luac.c|onelua.c) continue;; esac; "
    'cc $CFLAGS -c "$f" || exit 1; '
    'objs="$objs ${f%.c}.o"; '
    "done && "
    "cc $CFLAGS -o lua lua.c $objs -lm -ldl && "
    "test -s lua"
)
LUA54 = "third-party/lua54"


# The tree ---------------------------------------------------------------------------------

#: The package index's PEP 503 "simple" API; ``PIP_INDEX_URL`` overrides it as it does pip's.
INDEX_URL = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


class _Links(html.parser.HTMLParser):
    """The ``href`` of every ``<a>`` on a simple-index page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def fetch_sdist(filename: str, dest: Path) -> None:
    """Download ``filename`` of lupa from the index's simple page into ``dest``.

    Fetched directly rather than with ``pip download``: pip prepares an sdist's metadata by
    building it, which with ``--no-binary`` compiled Cython from source (8.5 minutes on the
    benchmark's first run).  The digest is checked by the caller against the pinned one.

    Raises:
        RuntimeError: the index has no such file or the download failed.
    """
    page_url = f"{INDEX_URL}/lupa/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as r:
            page = r.read().decode("utf-8", "replace")
        links = _Links()
        links.feed(page)
        for href in links.hrefs:
            url = urllib.parse.urljoin(page_url, href)
            if urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] == filename:
                break
        else:
            raise RuntimeError(f"{page_url} lists no {filename}")
        with urllib.request.urlopen(url.split("#", 1)[0], timeout=300) as r, dest.open("wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:  # URLError is an OSError
        raise RuntimeError(f"download of {filename} from {page_url} failed: {e}") from e


def default_tree(progress: Progress) -> Path:
    """The cached lupa source tree, downloaded from the package index and verified on first use.

    Raises:
        RuntimeError: the download failed or its digest is not the pinned one.
    """
    cache = common.CACHE_DIR
    tree = cache / f"lupa-{LUPA_VERSION}"
    ok = cache / f"lupa-{LUPA_VERSION}.extracted"  # outside the tree: it is not benchmarked
    if tree.is_dir() and ok.exists():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"lupa-{LUPA_VERSION}.tar.gz"
    if not tarball.exists():
        progress(f"downloading the lupa {LUPA_VERSION} source distribution from {INDEX_URL}")
        with tempfile.TemporaryDirectory(dir=cache) as dl:
            got = Path(dl) / tarball.name
            fetch_sdist(tarball.name, got)
            got.replace(tarball)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != LUPA_SHA256:
        tarball.unlink()
        raise RuntimeError(f"{tarball.name}: sha256 {digest} is not the pinned {LUPA_SHA256}")
    progress(f"extracting {tarball.name} (sha256 verified)")
    shutil.rmtree(tree, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(tarball) as tf:
        tf.extractall(tmp, filter="data")
        (Path(tmp) / tree.name).replace(tree)
    ok.touch()
    return tree


@dataclass(frozen=True)
class Tree:
    """The source tree, listed once (untimed) so that the phases only touch the target."""

    root: Path
    dirs: tuple[str, ...]  # relative, parents before children
    files: tuple[str, ...]  # relative, regular files
    links: tuple[tuple[str, str], ...]  # (relative path, link target)
    crcs: dict[str, int]
    total_bytes: int


def scan_tree(root: Path) -> Tree:
    dirs: list[str] = []
    files: list[str] = []
    links: list[tuple[str, str]] = []
    crcs: dict[str, int] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            p = os.path.join(rel, d) if rel != "." else d
            if os.path.islink(os.path.join(dirpath, d)):
                links.append((p, os.readlink(os.path.join(dirpath, d))))
            else:
                dirs.append(p)
        for f in sorted(filenames):
            p = os.path.join(rel, f) if rel != "." else f
            full = os.path.join(dirpath, f)
            if os.path.islink(full):
                links.append((p, os.readlink(full)))
            elif os.path.isfile(full):
                data = Path(full).read_bytes()
                files.append(p)
                crcs[p] = zlib.crc32(data)
                total += len(data)
    return Tree(root, tuple(dirs), tuple(files), tuple(links), crcs, total)


# The phases -------------------------------------------------------------------------------


class PhaseError(RuntimeError):
    """A phase failed or produced wrong results on a target; ``times`` has those done."""

    def __init__(self, msg: str, times: dict[str, float] | None = None) -> None:
        super().__init__(msg)
        self.times = dict(times or {})


def phase_mkdir(tree: Tree, dest: Path) -> None:
    for d in tree.dirs:
        os.mkdir(dest / d)


def phase_copy(tree: Tree, dest: Path) -> None:
    for f in tree.files:
        shutil.copy(tree.root / f, dest / f)
    for p, target in tree.links:
        os.symlink(target, dest / p)


def phase_stat(tree: Tree, dest: Path) -> None:
    count = 0
    stack = [dest]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                count += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
    want = len(tree.dirs) + len(tree.files) + len(tree.links)
    if count != want:
        raise PhaseError(f"stat: found {count} entries, the tree has {want}")


def phase_read(tree: Tree, dest: Path) -> None:
    for f in tree.files:
        crc = 0
        with open(dest / f, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 16):
                crc = zlib.crc32(chunk, crc)
        if crc != tree.crcs[f]:
            raise PhaseError(f"read: {f} differs from the source (CRC mismatch)")


def phase_compile(build: str, dest: Path, timeout: float) -> None:
    try:
        r = subprocess.run(
            ["sh", "-c", build],
            cwd=dest,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise PhaseError(f"compile: timed out after {timeout:.0f} s") from e
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [""])[-1]
        raise PhaseError(f"compile: exit {r.returncode}: {last}\n{r.stderr[-2000:]}")


def run_andrew(
    tree: Tree,
    site: Site,
    build: str,
    timeout: float,
    hooks: Sequence[Callable[[str, str], None]] = (),
    budget: float | None = None,
) -> dict[str, float]:
    """The five phases in ``site``; seconds per phase.

    Each hook is called as ``hook(phase, "start"|"end")`` around each phase (the CPU meter
    and the profiler hook in).
    ``budget`` bounds the whole run (a short run must stay short even when a degraded
    cluster crawls); each phase is bounded by ``timeout``.

    Raises:
        PhaseError: a phase failed, found wrong data, or ran past its time.
    """
    dest = site.path / "andrew"
    os.mkdir(dest)
    times: dict[str, float] = {}
    deadline = time.monotonic() + (budget if budget is not None else float("inf"))

    def limit() -> float:
        return max(1.0, min(timeout, deadline - time.monotonic()))

    steps = {
        "mkdir": lambda: phase_mkdir(tree, dest),
        "copy": lambda: phase_copy(tree, dest),
        "stat": lambda: phase_stat(tree, dest),
        "read": lambda: phase_read(tree, dest),
        "compile": lambda: phase_compile(build, dest, limit()),
    }
    for name in PHASES:
        if time.monotonic() >= deadline:
            raise PhaseError(f"{name}: not started, the {budget:.0f} s budget is spent", times)
        for hook in hooks:
            hook(name, "start")
        wd = common.Watchdog(site, limit())
        try:
            with wd:
                t0 = time.perf_counter()
                steps[name]()
                times[name] = time.perf_counter() - t0
        except OSError as e:
            why = " (timed out: daemon killed)" if wd.fired else ""
            raise PhaseError(f"{name}: {e}{why}", times) from e
        except PhaseError as e:
            if wd.fired:
                raise PhaseError(f"{name}: timed out (daemon killed); {e}", times) from e
            e.times = dict(times)
            raise
        finally:
            for hook in reversed(hooks):  # nested: the first hook's window is the widest
                hook(name, "end")
    times["total"] = sum(times[p] for p in PHASES)
    return times


def run_once(tree: Tree, build: str, where: Path, timeout: float = 600.0) -> float:
    """One short run in ``where`` (a new directory on a mount the caller holds); its total
    seconds.  For the benchmarks that time Andrew beside something else (a node replaced,
    a generation moved: ``replace.py``, ``generation_andrew.py``), where no site is
    opened and no daemon is the benchmark's to kill on a timeout.

    Raises:
        PhaseError: a phase failed, found wrong data, or ran past ``timeout``.
    """
    where.mkdir()
    site = Site(common.bftfs_spec(1, 1), where)
    return run_andrew(tree, site, build, timeout=timeout)["total"]


def lua54_build() -> str:
    """The compile phase's command for a copy of the Lua 5.4 directory alone (the tree
    ``run_once`` callers copy: ``default_tree(...) / LUA54``)."""
    return BUILD_TEMPLATE.replace("@LUA@", ".")


# The run ----------------------------------------------------------------------------------


def targets_from_args(args: argparse.Namespace) -> list[TargetSpec]:
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    specs: list[TargetSpec] = []
    for w in wanted:
        spec = common.spec_named(w, args.t, args.b, not args.no_durable, args.down)
        if spec is None:
            raise SystemExit(
                f"unknown target {w!r} "
                "(local, bindfs, glusterfs, seaweedfs, moosefs, cephfs, "
                "bftfs, bftfs-lease, bftfs-nolease, bftfs-down, "
                "bftfs-noverify, "
                "bftfs-plain)"
            )
        if spec.kind == "bftfs" and args.groups > 1:
            spec = dataclasses.replace(
                spec, name=f"{spec.name} {args.groups} groups", groups=args.groups
            )
        specs.append(spec)
    return specs


def measure(
    args: argparse.Namespace,
    tree: Tree,
    specs: list[TargetSpec],
    progress: Progress,
    work: Path,
    skipped: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The interleaved runs; a peer whose set-up fails goes into ``skipped``."""
    runs: list[dict[str, Any]] = []
    for w in range(args.warmup):
        progress(f"warm-up {w + 1}/{args.warmup} on local (untimed: caches, compiler)")
        with common.open_target(common.local_spec(), work, f"warm{w}") as site:
            run_andrew(tree, site, args.build, args.phase_timeout)
    for rep in range(args.runs):
        for spec in specs:
            if (spec.down and rep >= args.down_runs) or spec.name in skipped:
                continue
            progress(f"run {rep + 1}/{args.runs} {spec.name:<22}", end="")
            rec: dict[str, Any] = {"target": spec.name, "rep": rep}
            try:
                with variants.open_target(spec, work, f"r{rep}", args, progress) as site:
                    rec["setup_s"] = round(site.setup_s, 3)
                    budget = args.down_budget if spec.down else None
                    cpu = profiling.CpuMeter(site)
                    reqs = profiling.NodeCounter(site)
                    meter = costs.Costs(site)
                    meter("andrew", "start")
                    try:
                        rec["times"] = run_andrew(
                            tree, site, args.build, args.phase_timeout, (reqs, cpu), budget
                        )
                    finally:
                        meter("andrew", "end")
                        rec["costs"] = meter.per_unit("andrew", len(tree.files))
                        rec["cpu"] = cpu.phases
                        if reqs.phases:
                            rec["node_requests"] = reqs.phases
                    rec["info"] = site.info
            except (common.TargetError, PhaseError, OSError, RuntimeError) as e:
                rec["error"] = str(e)
                done = getattr(e, "times", {})
                if done:
                    rec["partial_times"] = done
                    progress.more(" " + " ".join(f"{p} {common.fmt_s(v)}" for p, v in done.items()))
                progress.more(f" FAILED: {str(e).splitlines()[0][:200]}", end="\n")
                if common.skip_after_failure(spec, e, skipped):
                    progress(f"{spec.name}: skipped from now on (see the results)")
            else:
                t = rec["times"]
                progress.more(
                    " ".join(f"{p} {common.fmt_s(t[p])}" for p in PHASES)
                    + f" | total {common.fmt_s(t['total'])}"
                    + costs.brief(rec["costs"], "file"),
                    end="\n",
                )
            runs.append(rec)
    profile: dict[str, Any] = {}
    if args.profile:
        spec = next((s for s in specs if s.kind == "bftfs" and not s.down), None)
        if spec is None:
            progress("--profile: no bftfs target to profile")
        else:
            profile = run_profile(args, tree, spec, progress, work)
    return runs, profile


def run_profile(
    args: argparse.Namespace, tree: Tree, spec: TargetSpec, progress: Progress, work: Path
) -> dict[str, Any]:
    out = args.out / f"{args.name or 'andrew-' + args.mode}-profile"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    progress(f"profile run (untimed) on {spec.name} with py-spy -> {out}")
    try:
        with common.open_target(spec, work, "prof") as site:
            watch = ("mount", "node1")
            prof = profiling.Profiler(site, out, watch)
            cpu = profiling.CpuMeter(site)
            times = run_andrew(tree, site, args.build, args.phase_timeout, hooks=(cpu, prof))
    except (common.TargetError, PhaseError, OSError, RuntimeError) as e:
        progress(f"profile run failed: {e}")
        return {"error": str(e)}
    result: dict[str, Any] = {
        "times": times,
        "cpu": cpu.phases,
        "rate": profiling.Profiler.RATE,
        "phases": {},
    }
    for phase in PHASES:
        dur = prof.durations.get(phase, times[phase])
        result["phases"][phase] = {
            w: profiling.summarise_profile(out / f"{phase}-{w}.txt", dur, profiling.Profiler.RATE)
            for w in prof.watch
        }
    return result


def summarise(runs: list[dict[str, Any]], specs: list[TargetSpec]) -> dict[str, Any]:
    """Medians and min-max per target and phase.

    A target none of whose runs finished (a degraded run stopped at its budget) gets the
    medians of the phases its runs did finish, flagged ``partial``; its total stays unknown.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        mine = [r for r in runs if r["target"] == spec.name]
        ok = [r["times"] for r in mine if "times" in r]
        partial = not ok and any(r.get("partial_times") for r in mine)
        if partial:
            ok = [r["partial_times"] for r in mine if r.get("partial_times")]
        out[spec.name] = {
            "runs": len(ok) if not partial else 0,
            "partial": partial,
            "errors": [r["error"] for r in mine if "error" in r],
            "median": {p: common.median([t[p] for t in ok if p in t]) for p in (*PHASES, "total")},
            "min_max": {p: common.spread([t[p] for t in ok if p in t]) for p in (*PHASES, "total")},
            "costs": costs.median_costs(
                [r["costs"] for r in mine if "times" in r and "costs" in r]
            ),
        }
    return out


def summarise_cpu(runs: list[dict[str, Any]], specs: list[TargetSpec]) -> dict[str, Any]:
    """Median CPU seconds per phase per side (workload, FUSE daemon, nodes), per target."""
    out: dict[str, Any] = {}
    for spec in specs:
        cpus = [r["cpu"] for r in runs if r["target"] == spec.name and r.get("cpu")]
        if not cpus:
            continue
        out[spec.name] = {
            p: {
                k: common.median([c[p][k] for c in cpus if p in c and k in c[p]])
                for k in ("wall", "workload", "mount", "bindfs", "nodes")
                if any(p in c and k in c[p] for c in cpus)
            }
            for p in PHASES
        }
    return out


def summarise_requests(runs: list[dict[str, Any]], specs: list[TargetSpec]) -> dict[str, Any]:
    """Median node requests (summed over nodes) per kind and phase, per bftfs target."""
    out: dict[str, Any] = {}
    for spec in specs:
        recs = [
            r["node_requests"] for r in runs if r["target"] == spec.name and r.get("node_requests")
        ]
        if not recs:
            continue
        out[spec.name] = {}
        for p in PHASES:
            kinds = {k for r in recs for k in r.get(p, {}) if k not in _COUNTER_NOISE}
            out[spec.name][p] = {
                k: common.median([r.get(p, {}).get(k, 0) for r in recs]) for k in kinds
            }
    return out


# The benchmark's own counter queries show up as these kinds.
_COUNTER_NOISE = {"req.stats", "req.ping"}


def requests_markdown(reqs: dict[str, Any], tree: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "#### Node requests per phase (medians, summed over all nodes)",
        "",
        f"For scale: the tree has {tree['files']} files and {tree['dirs']} directories.",
        "",
        "| target | phase | requests | per file | LMDB commits | by kind | node counters |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name, phases in reqs.items():
        for p, kinds in phases.items():
            req = {k: v for k, v in kinds.items() if k.startswith("req.")}
            total = sum(req.values())
            top = sorted(req.items(), key=lambda kv: -kv[1])[:4]
            by = ", ".join(f"{k[4:]} {v:.0f}" for k, v in top)
            other = {k: v for k, v in kinds.items() if not k.startswith("req.") and k != "commits"}
            ctr = ", ".join(
                f"{k} {v:.0f}" for k, v in sorted(other.items(), key=lambda kv: -kv[1])[:4]
            )
            per = total / tree["files"] if tree["files"] else 0
            lines.append(
                f"| {name} | {p} | {total:.0f} | {per:.1f} | {kinds.get('commits', 0):.0f} "
                f"| {by} | {ctr} |"
            )
    return lines


def cpu_markdown(cpu: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "#### CPU per phase (medians; CPU seconds from /proc, all threads)",
        "",
        "On 2 cores, 'cores busy' near 2.0 means the phase is CPU-bound across the processes; "
        "well below it, it waits (timeouts, fsync, round trips).",
        "",
        "| target | phase | wall | workload | FUSE daemon | nodes (all) | cores busy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, phases in cpu.items():
        for p, c in phases.items():
            wall = c.get("wall")
            daemon = c.get("mount", c.get("bindfs"))
            total = sum(c.get(k) or 0.0 for k in ("workload", "mount", "bindfs", "nodes"))
            busy = f"{total / wall:.2f}" if wall else "-"
            lines.append(
                f"| {name} | {p} | {common.fmt_s(wall)} | {common.fmt_s(c.get('workload'))} "
                f"| {common.fmt_s(daemon)} | {common.fmt_s(c.get('nodes'))} | {busy} |"
            )
    return lines


def main_bftfs(specs: list[TargetSpec]) -> str | None:
    return next((s.name for s in specs if s.kind == "bftfs" and not s.down), None)


def ratios(summary: dict[str, Any], specs: list[TargetSpec]) -> dict[str, dict[str, Any]]:
    """Phase by phase: each peer (GlusterFS, SeaweedFS, MooseFS, CephFS) over local; the main bftfs
    target (no node down) over local, bindfs and the peers; the other bftfs targets over
    local (a narrower table)."""
    out: dict[str, dict[str, Any]] = {}
    main = main_bftfs(specs)
    for spec in specs:
        if spec.kind not in ("glusterfs", "seaweedfs", "moosefs", "cephfs", "bftfs"):
            continue
        med = summary[spec.name]["median"]
        refs: tuple[str, ...] = ("local",)
        if spec.name == main:
            refs = ("local", "bindfs", "glusterfs", "seaweedfs", "moosefs", "cephfs")
        for ref in refs:
            if ref in summary and summary[ref]["runs"]:
                out[f"{spec.name} / {ref}"] = {
                    p: common.ratio(med[p], summary[ref]["median"][p]) for p in (*PHASES, "total")
                }
    return out


def markdown(result: dict[str, Any]) -> str:
    cfg, summary, rat = result["config"], result["summary"], result["ratios"]
    names = list(summary)
    lines = [
        f"### Andrew benchmark ({cfg['mode']} run, {result['date']})",
        "",
        f"Tree: {cfg['tree_name']} ({cfg['files']} files, {cfg['dirs']} directories, "
        f"{cfg['bytes'] / 1e6:.1f} MB); compile: {cfg['build_name']}. "
        f"Median of {cfg['runs']} interleaved runs per target (min-max in the JSON); "
        f"bftfs on a fresh cluster each run, t={cfg['t']}, b={cfg['b']}, "
        f"durable={not cfg['no_durable']}; 'down' = node(s) {cfg['down_nodes']} SIGKILLed "
        "before the mount." + common.peers_note(result),
        "",
        "| phase | "
        + " | ".join(n + (" *" if summary[n]["partial"] else "") for n in names)
        + " | "
        + " | ".join(rat)
        + " |",
        "|---|" + "---:|" * (len(names) + len(rat)),
    ]
    for p in (*PHASES, "total"):
        row = [common.fmt_s(summary[n]["median"][p]) for n in names]
        row += [common.fmt_ratio(rat[k][p]) for k in rat]
        label = f"**{p}**" if p == "total" else p
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    if any(s["partial"] for s in summary.values()):
        lines += [
            "",
            "\\* no run finished: the phases its runs finished before they were stopped "
            "(see below); '-' = not reached.",
        ]
    rows = [
        (n, common.fmt_s(s["median"]["total"]), s.get("costs") or {}) for n, s in summary.items()
    ]
    figure = {n: s["median"]["total"] for n, s in summary.items()}
    lines += costs.cost_table(
        rows, "total", "file", variants.ratios(result.get("twins", {}), figure)
    )
    lines += common.skipped_markdown(result.get("skipped") or {})
    errs = {
        n: s["errors"]
        for n, s in summary.items()
        if s["errors"] and n not in (result.get("skipped") or {})
    }
    if errs:
        lines += ["", "Failed or stopped runs:"]
        for n, es in errs.items():
            first = es[0].splitlines()[0][:300] if es[0] else ""
            lines.append(f"- {n}: {len(es)} failed; first: `{first}`")
    lines += common.machine_markdown(result)
    if result.get("cpu"):
        lines += cpu_markdown(result["cpu"])
    if result.get("node_requests"):
        lines += requests_markdown(result["node_requests"], cfg)
    prof = result.get("profile") or {}
    if prof.get("phases"):
        lines += [
            "",
            "#### Where bftfs spends the time (py-spy, one unmeasured run)",
            "",
            "Busy = non-idle py-spy samples over the phase (idle = trio waiting in epoll); "
            "the breakdowns are shares of the mount daemon's busy samples.",
            "",
            "| phase | time | mount daemon busy | by FUSE handler | by innermost layer "
            "| top functions (self) | node1 busy | node1 by layer |",
            "|---|---:|---:|---|---|---|---:|---|",
        ]
        for p in PHASES:
            ph = prof["phases"][p]
            mnt, node = ph.get("mount", {}), ph.get("node1", {})
            cells = [
                common.fmt_s(prof["times"][p]),
                profiling.pct(mnt.get("busy_share")),
                profiling.shares(mnt.get("by_handler"), 3),
                profiling.shares(mnt.get("by_layer"), 4),
                profiling.shares(mnt.get("self_by_function"), 2),
                profiling.pct(node.get("busy_share")),
                profiling.shares(node.get("by_layer"), 3),
            ]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    elif prof.get("error"):
        lines += ["", f"Profile run failed: `{prof['error'].splitlines()[0][:300]}`"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    summary, rat = result["summary"], result["ratios"]
    names = [n for n in summary if summary[n]["runs"] or summary[n]["partial"]]
    if not names:
        return False
    labels = [*PHASES, "total"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        med = [summary[n]["median"][p] or 0 for p in labels]
        mm = [summary[n]["min_max"][p] or (0, 0) for p in labels]
        lo = [m - a for m, (a, _) in zip(med, mm, strict=True)]
        hi = [b - m for m, (_, b) in zip(med, mm, strict=True)]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(labels))]
        label = n + (" (stopped: phases done)" if summary[n]["partial"] else "")
        ax1.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=label, color=common.colour_for(n))
    ax1.set_yscale("log")
    ax1.set_xticks(range(len(labels)), labels)
    ax1.set_ylabel("seconds (median, log scale; bars: min-max)")
    ax1.set_title("Andrew phases: time per target")
    ax1.legend(fontsize=8)
    keys = list(rat)
    if "bindfs" in summary and "local" in summary and summary["bindfs"]["runs"]:
        bl = {
            p: common.ratio(summary["bindfs"]["median"][p], summary["local"]["median"][p])
            for p in labels
        }
        rat = {"bindfs / local": bl, **rat}
        keys = list(rat)
    width = 0.8 / max(1, len(keys))
    for i, k in enumerate(keys):
        vals = [rat[k][p] or 0 for p in labels]
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(labels))]
        colour = common.colour_for(k.split(" / ")[0])
        hatch = "//" if k.endswith("/ bindfs") else None
        ax2.bar(xs, vals, width, label=k, color=colour, hatch=hatch, edgecolor="white")
    ax2.axhline(1.0, color="black", lw=0.8)
    ax2.axhline(1.5, color="grey", lw=0.8, ls="--", label="1.5x (goal for the total)")
    ax2.set_xticks(range(len(labels)), labels)
    ax2.set_ylabel("ratio of medians")
    ax2.set_title("Slowdown against the references")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    cfg = result["config"]
    fig.suptitle(
        f"Modified Andrew Benchmark, {cfg['tree_name']}, {cfg['runs']} runs "
        f"({result['date']}, {str(result['commit']['commit'])[:10]})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Modified Andrew Benchmark: bftfs against the local disk and bindfs, "
        "interleaved, with per-phase medians and ratios.",
        epilog="Short run by default (a few minutes); --full for more repetitions. "
        "Results go to benchmarks/results/andrew-<short|full>.{json,md,png}.",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="full run: the whole lupa sdist (981 files, 32 MB), 5 repetitions of every "
        "target (short: Lua 5.4's directory, 111 files, 1.7 MB; 3 repetitions, 1 degraded)",
    )
    ap.add_argument(
        "--whole-sdist",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default tree: the whole sdist rather than its third-party/lua54 "
        "(default: yes with --full)",
    )
    ap.add_argument(
        "--down-budget",
        type=float,
        help="seconds a degraded run may take before it is stopped and reported unfinished "
        "(default: 90 in the short run, none with --full)",
    )
    ap.add_argument(
        "--down-runs",
        type=int,
        help="repetitions of the degraded target (default: 1, or --runs with --full)",
    )
    ap.add_argument("--runs", type=int, help="repetitions per target (median reported)")
    ap.add_argument(
        "--tree",
        type=Path,
        help="source tree to use (default: lupa 2.8 sdist, downloaded and cached)",
    )
    ap.add_argument(
        "--build",
        help="build command for the compile phase, run with sh -c at "
        "the root of the copied tree (default: compile and link Lua 5.4)",
    )
    ap.add_argument(
        "--targets",
        default="local,bindfs,glusterfs,bftfs,bftfs-down",
        help="comma-separated, in interleaving order: local, bindfs, glusterfs, seaweedfs, "
        "moosefs, cephfs, bftfs, "
        "bftfs-down, bftfs-noverify (default: the first five)",
    )
    ap.add_argument("--t", type=int, default=1, help="bftfs: faulty nodes tolerated (default 1)")
    ap.add_argument("--b", type=int, default=1, help="bftfs: Byzantine among them (default 1)")
    ap.add_argument(
        "--groups",
        type=int,
        default=1,
        help="bftfs targets: a cluster of this many groups of n nodes (bftfs init --groups, "
        "docs/layout.md; default 1)",
    )
    ap.add_argument(
        "--down",
        type=int,
        default=1,
        help="bftfs-down: how many nodes to SIGKILL before the mount (ids 0..)",
    )
    ap.add_argument(
        "--no-durable",
        action="store_true",
        help="bftfs nodes acknowledge before fsync (default: durable)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs on local first")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="add one unmeasured bftfs run under py-spy and report where time goes",
    )
    ap.add_argument(
        "--phase-timeout",
        type=float,
        default=900.0,
        help="seconds before a phase is abandoned (the FUSE daemon is killed)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        help="scratch directory on the local disk (default: a temporary directory under /var/tmp)",
    )
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results directory")
    ap.add_argument("--name", help="results file stem (default andrew-<short|full>)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    variants.add_arguments(ap)
    args = ap.parse_args(argv)
    args.mode = "full" if args.full else "short"
    if args.runs is None:
        args.runs = 5 if args.full else 3
    if args.whole_sdist is None:
        args.whole_sdist = args.full
    if args.down_budget is None and not args.full:
        args.down_budget = 90.0
    if args.down_runs is None:
        args.down_runs = args.runs if args.full else 1
    return args


@contextlib.contextmanager
def scratch(args: argparse.Namespace) -> Iterator[Path]:
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix="andrew-", dir=args.work))
    else:
        d = Path(tempfile.mkdtemp(prefix="bftfs-andrew-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("andrew", args.quiet)
    specs = variants.expand(targets_from_args(args), args.aged, args.load)
    skipped = common.skip_reasons(specs)
    for name, why in skipped.items():
        progress(f"{name} skipped: {why}")
    specs = [s for s in specs if s.name not in skipped]
    if args.tree:
        root, tree_name = args.tree.resolve(), args.tree.resolve().name
        default_build = BUILD_TEMPLATE.replace("@LUA@", LUA54)
    else:
        sdist = default_tree(progress)
        pinned = f"lupa {LUPA_VERSION} sdist (PyPI, sha256 {LUPA_SHA256[:12]}...)"
        if args.whole_sdist:
            root, tree_name = sdist, pinned
            default_build = BUILD_TEMPLATE.replace("@LUA@", LUA54)
        else:
            root, tree_name = sdist / LUA54, f"{LUA54} of the {pinned}"
            default_build = BUILD_TEMPLATE.replace("@LUA@", ".")
    build = args.build or default_build
    args.build = build
    tree = scan_tree(root)
    progress(
        f"tree {root}: {len(tree.files)} files, {len(tree.dirs)} dirs, "
        f"{tree.total_bytes / 1e6:.1f} MB; {args.runs} runs x {len(specs)} targets "
        f"({', '.join(s.name for s in specs)})"
    )
    machine = common.machine_info()
    date = common.now_utc()
    with scratch(args) as work:
        runs, profile = measure(args, tree, specs, progress, work, skipped)
    machine["loadavg_end"] = list(os.getloadavg())
    summary = summarise(runs, specs)
    result = {
        "benchmark": "andrew",
        "date": date,
        "machine": machine,
        "commit": common.commit_info(),
        "config": {
            "mode": args.mode,
            "runs": args.runs,
            "warmup": args.warmup,
            "tree": str(root),
            "tree_name": tree_name,
            "files": len(tree.files),
            "dirs": len(tree.dirs),
            "links": len(tree.links),
            "bytes": tree.total_bytes,
            "build": build,
            "build_name": "default: cc -O2 Lua 5.4 (33 objects) and link `lua`"
            if build == default_build
            else f"`{build}`",
            "targets": [s.name for s in specs],
            "t": args.t,
            "b": args.b,
            "down_nodes": list(range(args.down)),
            "down_runs": args.down_runs,
            "down_budget": args.down_budget,
            "no_durable": args.no_durable,
            "bftfs_cluster": next(
                (r["info"] for r in runs if r.get("info") and "n" in r["info"]), None
            ),
            "glusterfs": next(
                (r["info"] for r in runs if r.get("info") and "volume" in r["info"]), None
            ),
            **variants.config(args),
        },
        "twins": variants.twins(specs),
        "phases": list(PHASES),
        "runs": runs,
        "summary": summary,
        "ratios": ratios(summary, specs),
        "cpu": summarise_cpu(runs, specs),
        "node_requests": summarise_requests(runs, specs),
        "profile": profile,
        "skipped": skipped,
    }
    stem = args.name or f"andrew-{args.mode}"
    md = common.write_results(
        args.out, stem, result, markdown, plot, progress, with_plot=not args.no_plot
    )
    print(md)
    return 0 if all(s["runs"] for n, s in summary.items() if n not in skipped) else 1


if __name__ == "__main__":
    sys.exit(main())
