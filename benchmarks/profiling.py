"""py-spy profiles of the bftfs processes during a benchmark, summarised per phase.

``Profiler`` attaches ``py-spy record`` (collapsed stacks, no line numbers, non-blocking so
the measured processes are not paused) to the mount daemon and to a node for each phase of a
workload; ``summarise_profile`` turns a recording into shares: how busy the process was
(idle = trio waiting in epoll), and its busy samples by FUSE handler, by innermost bftfs
layer (fuse, fs, qu client, rw client, transport, node store ...) and by function.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import Site

# Recording --------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


class Profiler:
    """py-spy on the bftfs processes of one site, one recording per phase."""

    RATE = 100  # samples per second: enough for phases of seconds, light on 2 cores

    def __init__(
        self, site: Site, out: Path, watch: tuple[str, ...], *, lines: bool = False
    ) -> None:
        self.site = site
        #: Keep line numbers (``parts_of_profile`` reads the source line of each sample).
        self.lines = lines
        self.out = out
        self.watch = [w for w in watch if w in site.pids]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: dict[str, float] = {}
        self.durations: dict[str, float] = {}
        self.exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def __call__(self, phase: str, what: str) -> None:
        if what == "start":
            for w in self.watch:
                path = self.out / f"{phase}-{w}.txt"
                cmd = [
                    self.exe,
                    "record",
                    "--pid",
                    str(self.site.pids[w]),
                    "--rate",
                    str(self.RATE),
                    "--format",
                    "raw",
                    *([] if self.lines else ["--nolineno"]),
                    "--nonblocking",
                    "--output",
                    str(path),
                ]
                self.procs[w] = subprocess.Popen(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            time.sleep(0.5)  # let py-spy attach before the phase starts
            self.started[phase] = time.perf_counter()
        else:
            self.durations[phase] = time.perf_counter() - self.started[phase]
            for p in self.procs.values():
                p.send_signal(signal.SIGINT)
            for p in self.procs.values():
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.procs.clear()


# A sample whose innermost frame is trio waiting in epoll is an idle process, not work.
_IDLE_LEAVES = ("EpollIOManager.get_events", "get_events")
# Classes that name a layer (py-spy shortens some paths to a bare file name, so the class in
# the function name is the reliable part).
_LAYER_BY_CLASS = {
    "Endpoint": "transport",
    "Connection": "transport",
    "Coalescer": "transport",
    "FrameWriter": "transport",
    "FrameReader": "transport",
    "Session": "transport",
    "QuorumEngine": "transport",
    "QuorumDriver": "transport",
    "_Fanout": "transport",
    "Batcher": "transport",
    "Server": "transport",
    "_ServerConnection": "transport",
    "QUClient": "qu client",
    "RWClient": "rw client",
    "FileSystem": "fs",
    "Operations": "fuse",
}
# Modules at the bottom of every stack: they say nothing about where the time goes.
_ENTRY_FILES = (
    "bftfs/__main__.py",
    "bftfs/cli/main.py",
    "bftfs/cli/nodes.py",
    "bftfs/fuse/mount.py",
    "bftfs/node/main.py",
)


def _layer(frames: list[tuple[str, str]]) -> str:
    """The innermost bftfs layer of a stack, or the library it is in when no layer is."""
    for func, file in reversed(frames):
        cls = func.split(".", 1)[0]
        if cls in _LAYER_BY_CLASS:
            return _LAYER_BY_CLASS[cls]
        if file.startswith("bftfs/") and file not in _ENTRY_FILES:
            return file
    return frames[-1][1] if frames else "?"


def _handler(frames: list[tuple[str, str]]) -> str:
    """The FUSE handler a sample serves, else the background task or loop it is in."""
    for func, _ in frames:
        if func.startswith("Operations.") and func.count(".") == 1:
            return func.split(".", 1)[1]
    for func, _ in frames:
        if func.split(".", 1)[0] in _LAYER_BY_CLASS:
            return "task " + func.replace(".<locals>", "")
    leaf = frames[-1][1] if frames else "?"
    return "pyfuse3 request loop" if "pyfuse3" in leaf else f"loop ({leaf})"


def summarise_profile(path: Path, duration: float, rate: int, top: int = 6) -> dict[str, Any]:
    """Where a process spent a phase, from py-spy's collapsed stacks.

    ``busy_share`` is the non-idle samples over the phase's length (above 1 when several
    threads work, e.g. a node's commit thread); the breakdowns are shares of busy samples:
    by FUSE handler, by innermost bftfs layer, and by innermost function (self time).
    """
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            frames = []
            for fr in stack.split(";"):
                m = _FRAME.match(fr)
                frames.append((m["func"], _short(m["file"])) if m else (fr, "?"))
            stacks.append((frames, int(n)))
    busy = [(f, n) for f, n in stacks if f and f[-1][0] not in _IDLE_LEAVES]
    total = sum(n for _, n in busy)
    by_handler: Counter[str] = Counter()
    by_layer: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    for frames, n in busy:
        by_handler[_handler(frames)] += n
        by_layer[_layer(frames)] += n
        func, file = frames[-1]
        self_fn[f"{func} ({file})"] += n
    busy_s = total / rate

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[k, round(v / total, 3)] for k, v in c.most_common(top)] if total else []

    return {
        "samples": sum(n for _, n in stacks),
        "busy_samples": total,
        "busy_s": round(busy_s, 3),
        "busy_share": round(busy_s / duration, 3) if duration else None,
        "by_handler": share(by_handler),
        "by_layer": share(by_layer),
        "self_by_function": share(self_fn),
    }


# Parts of the big-file data path (issue 34), by the source line a sample is on: the
# innermost frame in bftfs, or the library frame when no bftfs frame is innermost.  Rules
# are tried in order; the first whose pattern is in the line (or in ``function (file)``)
# names the part.  C code shows as the Python line that called it.
_PART_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "erasure code",
        ("zfec", "_encoder(", "_decoder(", ".encode(stripes", ".decode(blocks", "ec_encode_data"),
    ),
    ("hash", ("fragment_hash", "verifier_of", "hashlib", ".digest()", "h.update(", "_hasher")),
    ("AEAD", ("_aead_", "aegis")),
    ("LMDB commit", ("txn.commit", "_run_batch", "_commit(")),
    ("LMDB read/write", ("_txn.", "cur.", "cursor", "lmdb", "_LmdbKV")),
    ("msgpack", ("packb", "unpackb", "msgpack", "pack(", "unpack(")),
    ("socket I/O", ("os.write", "os.read", "send_all", "receive_some", "socket")),
    ("copies", ("join(", "ljust(", "bytes(", "bytearray(", "memoryview(", "tobytes", "+=")),
)


def _package_root() -> Path:
    """Where the bftfs being measured lives (a tree given by ``PYTHONPATH``, to profile an
    older commit, or this one): the source lines of its samples are read from there."""
    import importlib.util

    spec = importlib.util.find_spec("bftfs")
    if spec is None or spec.origin is None:
        return Path(__file__).resolve().parent.parent
    return Path(spec.origin).resolve().parent.parent


_REPO = _package_root()


def _in_bftfs(file: str) -> bool:
    return file.startswith("bftfs/") or "/bftfs/" in file


def _line_text(file: str, line: int) -> str:
    """The source line of a bftfs frame (py-spy gives paths from the package root)."""
    import linecache

    if not line:
        return ""
    path = str(_REPO / file[file.index("bftfs/") :]) if _in_bftfs(file) else file
    return linecache.getline(path, line).strip()


def _part_of(stack: list[tuple[str, str, int]]) -> str:
    """The part of the data path one sample is in (see ``_PART_RULES``)."""
    if not stack:
        return "?"
    func, file, line = stack[-1]
    if func in _IDLE_LEAVES or func == "WorkerThread._work":
        return "idle"
    if "pyfuse3" in file and not any(_in_bftfs(f) for _, f, _ in stack):
        return "FUSE (pyfuse3)"
    if any(fn.startswith(("Verifier.", "verified_step", "unverified_step")) for fn, _, _ in stack):
        return "lazy verification"  # a node verifying blocks written before (its own part)
    inner = next(((fn, f, ln) for fn, f, ln in reversed(stack) if _in_bftfs(f)), None)
    leaf_lib = not _in_bftfs(file)
    where = inner if inner is not None else (func, file, line)
    text = _line_text(where[1], where[2]) + f" {where[0]} ({where[1]})"
    if leaf_lib and ("trio" in file or "selectors" in file):
        return "trio loop"
    for part, patterns in _PART_RULES:
        if any(p in text for p in patterns):
            return part
    if any(fn.startswith("Operations.") for fn, _, _ in stack):
        return "FUSE handlers (bftfs)"
    return "Python glue"


_FRAME_LINE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parts_of_profile(path: Path, cpu_s: float) -> dict[str, float]:
    """CPU seconds per part of a process's ``cpu_s``, in proportion to its busy samples
    (a recording made with ``Profiler(lines=True)``; idle samples are left out)."""
    counts: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for raw in path.read_text(errors="replace").splitlines():
            stack_s, _, n = raw.rpartition(" ")
            if not stack_s or not n.isdigit():
                continue
            stack = []
            for fr in stack_s.split(";"):
                m = _FRAME_LINE.match(fr)
                if m:
                    stack.append((m["func"], m["file"], int(m["line"] or 0)))
            part = _part_of(stack)
            if part != "idle":
                counts[part] += int(n)
    total = sum(counts.values())
    if not total:
        return {}
    return {k: round(cpu_s * v / total, 3) for k, v in counts.most_common()}


def _short(file: str) -> str:
    """A source path shortened to its package-relative form (bftfs/qu/client.py, trio/...)."""
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return file.lstrip("/")


def shares(items: list[list[Any]] | None, k: int) -> str:
    return ", ".join(f"{name} {v:.0%}" for name, v in (items or [])[:k])


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


# CPU accounting -----------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(line: str, clk_tck: int = _CLK_TCK) -> float:
    """User + system CPU seconds from one ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may itself hold spaces and ``)``, so
    the fields are counted from its last ``)``.

    Raises:
        ValueError: the line is not a stat line.
    """
    try:
        fields = line.rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / clk_tck
    except IndexError as e:
        raise ValueError(f"not a /proc stat line: {line[:80]!r}") from e


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads) so far, or None if gone."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError):
        return None


def settle(pids: list[int], deadline_s: float = 600.0, idle_cores: float = 0.2) -> float:
    """Wait until the processes ``pids`` are done with what was left them (a fill leaves
    the nodes verifying every block lazily): together less than ``idle_cores`` of a core
    over one second, or ``deadline_s``; seconds waited.  A quiet run measured afterwards
    is then the cluster's, not the verification's (``replace.py``,
    ``generation_andrew.py``)."""

    def used() -> float:
        return sum(cpu_seconds(p) or 0.0 for p in pids)

    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        before = used()
        time.sleep(1.0)
        if used() - before < idle_cores:
            break
    return time.monotonic() - t0


class CpuMeter:
    """CPU seconds each side spends per phase: the workload, the FUSE daemon, the nodes.

    Cheap enough (a /proc read per process per phase) to run on every measured run. On a
    2-core machine, the sum over all processes against the phase's wall time says whether a
    phase is CPU-bound (the sum nears 2 x wall) or waits (on timeouts, fsync, the network).
    """

    def __init__(self, site: Site) -> None:
        self.pids = dict(site.pids)
        self.phases: dict[str, dict[str, float]] = {}
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _snapshot(self) -> dict[str, float]:
        snap: dict[str, float] = {}
        for name, pid in self.pids.items():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                group = "nodes" if name.startswith("node") else name
                snap[group] = snap.get(group, 0.0) + cpu
        t = os.times()
        snap["workload"] = t.user + t.system + t.children_user + t.children_system
        return snap

    def __call__(self, phase: str, what: str) -> None:
        if what == "start":
            self._start = self._snapshot()
            self._t0 = time.perf_counter()
            return
        wall = time.perf_counter() - self._t0
        end = self._snapshot()
        out = {k: round(end[k] - v, 3) for k, v in self._start.items() if k in end}
        out["wall"] = round(wall, 3)
        self.phases[phase] = out


# Node counters ------------------------------------------------------------------------------


def node_counters(config: Any) -> dict[str, float] | None:
    """Requests by kind and LMDB commits, summed over the nodes that answer (as client1).

    client1 rather than client0 so the mount's own connections are left alone.
    """
    import trio

    from bftfs.local import query_status

    try:
        statuses = trio.run(lambda: query_status(config, timeout=2.0, client="client1"))
    except Exception:  # counters are a diagnostic: never fail a run over them
        return None
    total: Counter[str] = Counter()
    for st in statuses:
        if st.stats:
            total["commits"] += int(st.stats.get("commits", 0))
            for kind, n in (st.stats.get("requests") or {}).items():
                total[str(kind)] += int(n)  # "req.<kind>" requests, and protocol counters
            # Blocks the nodes' lazy verifiers verified (a read right after a write races it).
            verify = (st.stats.get("progress") or {}).get("rw.verify") or {}
            total["verified"] += int(verify.get("verified", 0))
            total["verify_forced"] += int(verify.get("forced", 0))
            total["verify_read_holds"] += int(verify.get("read_holds", 0))
            total["verify_pressure"] += int(bool(verify.get("pressure")))
    return dict(total)


class NodeCounter:
    """Requests (by kind, summed over nodes) and commits the nodes saw during each phase."""

    def __init__(self, site: Site) -> None:
        self.config = site.config
        self.phases: dict[str, dict[str, float]] = {}
        self._start: dict[str, float] | None = None

    def __call__(self, phase: str, what: str) -> None:
        if self.config is None:
            return
        snap = node_counters(self.config)
        if what == "start":
            self._start = snap
        elif snap is not None and self._start is not None:
            self.phases[phase] = {
                k: v - self._start.get(k, 0) for k, v in snap.items() if v - self._start.get(k, 0)
            }
