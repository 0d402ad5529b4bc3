"""bftfs and GlusterFS across a WAN (issue 65): seconds against the round-trip time.

For each one-way delay (``--delays``, default 10 and 25 ms) one WAN bed
(:mod:`bftfs.testing.wan`: six network-namespace hosts, every client<->host link delayed
by that amount, the client in the root namespace), and on it, ``--reps`` times,
interleaved (bftfs first on even repetitions, GlusterFS first on odd ones):

- **bftfs**: a fresh cluster, one node per host (``t = b = 1``), mounted in the root
  namespace;
- **GlusterFS**: a replica-3 volume whose three bricks are on hosts 0-2, each host
  running its own ``glusterd`` (a trusted pool probed across the bed), so the bricks sit
  behind the same delays as bftfs's nodes; mounted in the root namespace with
  ``mount -t glusterfs`` (its FUSE client talks to each brick directly).

On each mount: an Andrew-like run on a seeded tree (``--files`` files of 100 B to 64 KB in
10 directories): ``copy`` (``cp -r`` in), ``stat`` (``lstat`` of every entry, like
``ls -lR``), ``read`` (every byte read back, checked); then a small PostMark (the real
program, ``--pm-files`` files, ``--pm-transactions`` transactions, seed 42): its whole
run's seconds and its transactions per second over that run.  ``--mb`` (default 0: off)
adds one big file written with ``fsync`` and read back on a fresh mount (bftfs only).
``--far MS`` puts host 5 (a bftfs node, no GlusterFS brick) ``MS`` one-way away instead
(issue 65's "one node at 150 ms, the others at 25 ms"): run it and a run without it in
turn and compare bftfs's rows.

A markdown table of seconds per phase is printed; nothing is saved.  Needs root,
iproute2, FUSE, ``postmark`` and GlusterFS (``make setup-tests``,
``scripts/setup-bench.sh``); a GlusterFS step that fails is reported and its row left out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from bftfs import config as cfgmod
from bftfs import proc
from bftfs.local import query_status
from bftfs.testing import netns, wan

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart  # noqa: E402
import common  # noqa: E402
from postmark import postmark_config  # noqa: E402

PIECE = 1 << 20
#: What ``--workloads`` chooses from.
WORKLOADS = ("andrew", "postmark", "git", "big")


def make_tree(root: Path, files: int, seed: int) -> dict[str, str]:
    """The seeded source tree on the local disk; returns each file's SHA-256."""
    rng = random.Random(seed)
    sums = {}
    for k in range(files):
        rel = f"d{k % 10}/f{k}"
        data = rng.randbytes(rng.choice([100, 1_000, 8_000, 64_000]))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        sums[rel] = hashlib.sha256(data).hexdigest()
    return sums


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def stat_all(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))


def read_all(root: Path, sums: dict[str, str]) -> None:
    for rel, digest in sums.items():
        if hashlib.sha256((root / rel).read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"{rel} read back wrong")


def write_big(path: Path, mb: int) -> None:
    """``mb`` MiB written in 1 MiB ``write()`` calls, then ``fsync``: on the nodes."""
    piece = random.Random(mb).randbytes(PIECE)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())


def read_big(path: Path, mb: int) -> None:
    """Every byte of :func:`write_big`'s file read back in 1 MiB ``read()`` calls."""
    piece = random.Random(mb).randbytes(PIECE)
    with open(path, "rb") as f:
        got = 0
        for b in iter(lambda: f.read(PIECE), b""):
            if b != piece[: len(b)]:
                raise RuntimeError(f"the big file read back wrong at {got}")
            got += len(b)
    if got != mb * PIECE:
        raise RuntimeError(f"read {got} bytes of {mb * PIECE}")


def link_bound(system: str, rate_mbit: float, m: int) -> float:
    """Bytes of file data per second the client's links allow a big file written or read,
    each link carrying ``rate_mbit`` each way (docs/wan.md, "The 200 MB file").  bftfs:
    a write sends each of the ``n`` nodes one fragment of ``1/m`` of each block, a read
    fetches the ``m`` data fragments from the ``m`` data nodes, so the busiest link carries
    ``1/m`` of the file either way: ``m * rate``.  GlusterFS replica 3: every brick gets
    the whole file, a read takes it from one brick: ``rate``."""
    per_link = rate_mbit * 1e6 / 8
    return m * per_link if system == "bftfs" else per_link


# A C tree in git: `git clone` + `make` (issue 65) --------------------------------------------


def make_c_tree(root: Path, units: int, seed: int) -> int:
    """A seeded C program of ``units`` files (each a few functions) and a Makefile, one
    object per file as a real build; returns what the program prints."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    total, calls, decls = 0, [], []
    for u in range(units):
        body = ['#include "units.h"\n']
        for k in range(rng.randint(3, 8)):
            a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(2, 9)
            name = f"u{u}_f{k}"
            body.append(
                f"int {name}(int x) {{\n    int s = {a};\n"
                f"    for (int i = 0; i < {c}; i++) s = (s * {b} + x + i) % 1000003;\n"
                "    return s;\n}\n"
            )
            decls.append(f"int {name}(int x);")
            calls.append(f"    t += {name}({u + k});")
            s = a
            for i in range(c):
                s = (s * b + (u + k) + i) % 1000003
            total += s
        (root / f"unit{u}.c").write_text("\n".join(body))
    (root / "units.h").write_text("\n".join(decls) + "\n")
    main = ["#include <stdio.h>", '#include "units.h"', "int main(void) {", "    long t = 0;"]
    main += calls + ['    printf("%ld\\n", t);', "    return 0;", "}"]
    (root / "main.c").write_text("\n".join(main) + "\n")
    objs = " ".join(f"unit{u}.o" for u in range(units)) + " main.o"
    (root / "Makefile").write_text(
        f"CFLAGS = -O1\nprog: {objs}\n\t$(CC) -o $@ $^\n%.o: %.c units.h\n"
        "\t$(CC) $(CFLAGS) -c -o $@ $<\n"
    )
    return total


def git_repo(tmp: Path, units: int) -> tuple[Path, str]:
    """The C tree committed into a bare repository on the client's local disk (outside
    any mount); returns its path and what the built program prints."""
    tree = tmp / "ctree"
    expect = make_c_tree(tree, units, seed=65)
    env = {**os.environ, "GIT_AUTHOR_DATE": "2026-11-29T00:00:00Z"}
    env |= {"GIT_COMMITTER_DATE": env["GIT_AUTHOR_DATE"]}
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    for cmd in (["init", "-q"], ["add", "."], [*ident, "commit", "-q", "-m", "tree"]):
        subprocess.run(["git", "-C", str(tree), *cmd], check=True, env=env)
    bare = tmp / "ctree.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(tree), str(bare)], check=True)
    return bare, str(expect)


def git_build(mnt: Path, repo: Path, expect: str) -> dict[str, float]:
    """``git clone`` (the pack transport, as from a server) into the mount, ``make`` there
    (one compiler per file), and the program's output checked."""
    dest = mnt / "clone"
    clone = ["git", "clone", "-q", f"file://{repo}", str(dest)]
    out = {"clone": timed(lambda: subprocess.run(clone, check=True))}
    make = ["make", "-s", "-C", str(dest)]
    out["make"] = timed(lambda: subprocess.run(make, check=True, capture_output=True))
    got = subprocess.run([str(dest / "prog")], capture_output=True, text=True, check=True)
    if got.stdout.strip() != expect:
        raise RuntimeError(f"the program built in the mount printed {got.stdout!r}")
    return out


@dataclass
class Inputs:
    """What every run works from, made once on the local disk: the Andrew-like tree and
    its digests, the bare repository and what its program prints."""

    src: Path
    sums: dict[str, str]
    repo: Path
    expect: str


def postmark(root: Path, work: Path, files: int, transactions: int) -> dict[str, float]:
    """One PostMark run in ``root/pm`` (the real program, seed 42, its default sizes):
    seconds of the whole run, and transactions per second over it."""
    (root / "pm").mkdir()
    cfg = work / f"pm-{time.monotonic_ns()}.cfg"
    # PostMark's own default sizes; run in root with a short location (postmark_config).
    cfg.write_text(postmark_config("pm", files, transactions, 42, 500, 10000))
    run = ["postmark", str(cfg)]
    seconds = timed(
        lambda: subprocess.run(run, check=True, capture_output=True, timeout=3600, cwd=root)
    )
    return {"postmark s": seconds, "postmark tps": transactions / seconds}


def workload(mounts: Mounts, work: Path, inp: Inputs, args: Any) -> dict[str, float]:
    """The chosen workloads (``--workloads``) on ``mounts``: the Andrew-like phases, the
    small PostMark, ``git clone`` + ``make``, the big file (written, then read on a fresh
    mount)."""
    out: dict[str, float] = {}
    chosen = args.workloads.split(",")
    mnt = mounts.path
    if "andrew" in chosen:
        cp = ["cp", "-r", str(inp.src), str(mnt / "tree")]
        out["copy"] = timed(lambda: subprocess.run(cp, check=True))
        out["stat"] = timed(lambda: stat_all(mnt / "tree"))
        out["read"] = timed(lambda: read_all(mnt / "tree", inp.sums))
    if "postmark" in chosen:
        out.update(postmark(mnt, work, args.pm_files, args.pm_transactions))
    if "git" in chosen:
        out.update(git_build(mnt, inp.repo, inp.expect))
    if "big" in chosen and args.mb:
        before = mounts.verified()
        cpu0 = daemon_cpu(mnt)
        w0 = time.monotonic()
        out["write big"] = timed(lambda: write_big(mnt / "big", args.mb))
        w1 = time.monotonic()
        cpu1, peak = daemon_cpu(mnt), daemon_peak_mib(mnt)
        during = [b - a for a, b in zip(before, mounts.verified(), strict=False)]
        if during:  # (bftfs: lazy verification's reads share the links with the write)
            print(f"blocks each node verified during the write: {during}", flush=True)
        if args.settle:
            out["settle"] = mounts.settle()
        again = mounts.again()
        cpu2 = daemon_cpu(again)
        r0 = time.monotonic()
        out["read big"] = timed(lambda: read_big(again / "big", args.mb))
        r1 = time.monotonic()
        cpu3 = daemon_cpu(again)
        if cpu0 is not None and cpu1 is not None and cpu2 is not None and cpu3 is not None:
            print(
                f"mount daemon CPU: write {cpu1 - cpu0:.1f} s (peak RSS {peak:.0f} MiB), "
                f"read {cpu3 - cpu2:.1f} s",
                flush=True,
            )
        idle_report(mounts, args, {"write": (w0, w1), "read": (r0, r1)})
        streaming = mount_streaming(mounts, again, time.time())
        if streaming:
            window = streaming.get("readahead-largest", 0) / 2**20
            print(f"read-ahead window's largest size {window:.1f} MiB; {streaming}", flush=True)
    return out


def mount_streaming(mounts: Mounts, path: Path, after: float) -> dict[str, int]:
    """The bftfs mount's read-ahead and write-behind counters from its status report
    published after ``after`` (waited for up to 20 s; {} for GlusterFS or none)."""
    if mounts.config is None:
        return {}
    for _ in range(40):
        r = wan.bftfs_cli("status", "--config", str(mounts.config), "--json", check=False)
        try:
            reports = json.loads(r.stdout).get("mounts", [])
        except ValueError:
            reports = []
        for m in reports:
            if m.get("mountpoint") == str(path) and m.get("updated", 0) > after:
                return dict(m.get("streaming") or {})
        time.sleep(0.5)  # a benchmark polling another process's report
    return {}


def daemon_pids(mnt: Path) -> list[int]:
    """The processes serving the mount at ``mnt`` (the bftfs mount daemon: its command
    line names the mount point; GlusterFS's client names its volume instead)."""
    return [
        pid
        for pid, argv in proc.command_lines()
        if any(str(mnt).encode() in a for a in argv) and any(b"bftfs" in a for a in argv)
    ]


def daemon_cpu(mnt: Path) -> float | None:
    """CPU seconds (user + system) of :func:`daemon_pids`; None if there is none."""
    total, found, tick = 0.0, False, os.sysconf("SC_CLK_TCK")
    for pid in daemon_pids(mnt):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


def daemon_peak_mib(mnt: Path) -> float:
    """The largest peak resident set (``VmHWM``) of :func:`daemon_pids`, MiB."""
    peak = 0.0
    for pid in daemon_pids(mnt):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def flush_lines(log: Path | None, start: float, end: float) -> list[tuple[float, float, int]]:
    """The mount's background flushes (``fs/writeback/flush_behind.py``'s debug lines:
    start, end, blocks) that began between monotonic ``start`` and ``end``."""
    if log is None or not log.exists():
        return []
    got = []
    for line in log.read_text(errors="replace").splitlines():
        if "flush-behind" in line:
            words = line.split("flush-behind", 1)[1].split()
            a, b, blocks = float(words[1]), float(words[2]), int(words[3])
            if start <= a <= end:
                got.append((a, b, blocks))
    return got


def idle_report(mounts: Mounts, args: Any, phases: dict[str, tuple[float, float]]) -> None:
    """Where the links sat idle during the big file's phases (issue 65): per link, the
    mean fraction of its rate it carried the way the data goes (to the hosts for the
    write, from them for the read) and the fraction of 100 ms ticks it was idle (below
    10%); the mount's background flushes beside them; the wire's CPU.  With
    ``--timeline DIR`` the ticks and the flushes are saved as JSON there."""
    if mounts.bed is None or not args.rate:
        return
    tl = mounts.bed.timeline()
    saved: dict[str, Any] = {"cpu": tl.cpu, "load": os.getloadavg()}
    for phase, (start, end) in phases.items():
        ticks = tl.window(start, end)
        way = 0 if phase == "write" else 1  # to the hosts, or from them
        cells = []
        for i in range(len(ticks) // 2):
            used, idle = wan.busy_fractions(ticks[2 * i + way], args.rate)
            cells.append(f"{used:.2f}/{idle:.2f}")
        flushes = flush_lines(mounts.log, start, end)
        gaps = [b[0] - a[1] for a, b in zip(flushes, flushes[1:], strict=False)]
        extra = ""
        if flushes:
            extra = (
                f"; {len(flushes)} background flushes of median "
                f"{statistics.median(f[2] for f in flushes):g} blocks, "
                f"{statistics.median(f[1] - f[0] for f in flushes):.2f} s, gap median "
                f"{statistics.median(gaps) if gaps else 0:.3f} s"
            )
        print(
            f"{phase} {end - start:.1f} s: links 0-5 used/idle {' '.join(cells)}{extra}; "
            f"wire CPU {tl.cpu:.1f} s so far; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        saved[phase] = {"start": start, "end": end, "ticks": ticks, "flushes": flushes}
    if args.timeline:
        args.timeline.mkdir(parents=True, exist_ok=True)
        name = f"big-{time.strftime('%H%M%S')}-{os.getpid()}.json"
        (args.timeline / name).write_text(json.dumps(saved))


class Mounts:
    """A system's mount in the root namespace, and :meth:`again`: unmounted and mounted
    afresh, so nothing of the file system is cached in the client."""

    def __init__(
        self,
        stack: ExitStack,
        mount: Callable[[Path], object],
        work: Path,
        umount: list[str],
        config: Path | None = None,
        bed: wan.Wan | None = None,
        log: Path | None = None,
    ) -> None:
        self.stack, self.mount, self.work, self.umount = stack, mount, work, umount
        self.config, self.count = config, 0
        #: The bed (its links' timeline) and the mount's log (its background flushes).
        self.bed, self.log = bed, log
        self.path = self.again()

    def _progress(self) -> list[dict[str, Any]]:
        """Each bftfs node's lazy-verification progress (none for GlusterFS)."""
        if self.config is None:
            return []
        got = trio.run(
            functools.partial(query_status, cfgmod.load(self.config), timeout=5.0, client="client1")
        )
        return [(s.stats or {}).get("progress", {}).get("rw.verify", {}) for s in got if s.up]

    def verified(self) -> list[int]:
        """Blocks each bftfs node has verified so far."""
        return [int(p.get("verified", 0)) for p in self._progress()]

    def settle(self, limit: float = 300.0) -> float:
        """Seconds until every bftfs node's lazy verifier has verified what was written
        (its backlog empty; 0 for GlusterFS, which has nothing to verify): what a cold read
        of a big file written a while ago meets.  Polled from the nodes' statistics."""
        if self.config is None:
            return 0.0
        start = time.monotonic()
        while time.monotonic() - start < limit:
            left = [int(p.get("backlog_versions", 1)) for p in self._progress()]
            if left and not any(left):
                break
            time.sleep(0.5)  # a benchmark polling other processes
        return time.monotonic() - start

    def again(self) -> Path:
        self.stack.close()
        self.count += 1
        self.path = self.work / f"m{self.count}"
        self.path.mkdir()
        self.mount(self.path)
        self.stack.callback(subprocess.run, [*self.umount, str(self.path)], capture_output=True)
        return self.path


def run_bftfs(bed: wan.Wan, work: Path, inp: Inputs, args: Any) -> dict[str, float]:
    """bftfs's phases on a fresh cluster on ``bed``."""
    with wan.cluster(bed, work / "admin") as config, ExitStack() as mounted:
        log = work / "mount.log"
        mount = ["mount", "--debug-modules", "bftfs.fs.writeback.flush_behind", "--config"]
        opts = ",".join(["client=client0", *filter(None, [args.options])])
        mount += [str(config), "-o", opts, "--log", str(log)]
        umount = [sys.executable, "-m", "bftfs", "umount"]
        mounts = Mounts(
            mounted, lambda p: wan.bftfs_cli(*mount, str(p)), work, umount, config, bed, log
        )
        out = workload(mounts, work, inp, args)
    return out


# GlusterFS behind the same delays -----------------------------------------------------------

#: The hosts of the bed that carry GlusterFS's bricks, one glusterd each.
GLUSTER_HOSTS = 3


def glusterd_vol(workdir: Path, address: str, sock: Path) -> str:
    """The volume file of one host's glusterd: its own state directory, its host's address
    and its own command socket (Debian's ``glusterd.vol`` otherwise, as
    ``benchmarks/gluster.py``)."""
    return (
        "volume management\n    type mgmt/glusterd\n"
        f"    option working-directory {workdir}\n    option transport-type socket\n"
        f"    option glusterd-sockfile {sock}\n    option transport.address-family inet\n"
        f"    option transport.socket.bind-address {address}\n"
        "    option transport.socket.listen-port 24007\n    option ping-timeout 0\n"
        "    option transport.socket.keepalive-time 10\n"
        "    option transport.socket.keepalive-interval 2\n"
        "    option transport.tcp-user-timeout 0\n"
        "    option event-threads 1\n    option max-port 60999\nend-volume\n"
    )


def gluster_cli(bed: wan.Wan, i: int, work: Path, *args: str) -> subprocess.CompletedProcess:
    """``gluster ARGS`` against host ``i``'s glusterd (its own socket, in its namespace)."""
    cmd = ["gluster", "--mode=script", f"--glusterd-sock={work / f'gd{i}.sock'}", *args]
    return subprocess.run(bed.hosts.command(i, cmd), capture_output=True, text=True, timeout=300)


def _gluster_ok(bed: wan.Wan, work: Path, *args: str) -> str:
    r = gluster_cli(bed, 0, work, *args)
    if r.returncode:
        raise RuntimeError(f"gluster {' '.join(args)}: {r.stdout}{r.stderr}".strip())
    return r.stdout


def _answers(bed: wan.Wan, i: int, work: Path) -> bool:
    """Whether host ``i``'s glusterd answers its command."""
    return gluster_cli(bed, i, work, "volume", "list").returncode == 0


def _wait(what: str, ok: Callable[[], bool], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"GlusterFS: {what} not within {seconds:g} s")
        time.sleep(0.5)  # polling a daemon's state through its command


@contextlib.contextmanager
def gluster_volume(bed: wan.Wan, work: Path) -> Iterator[str]:
    """A replica-3 volume with a brick on each of hosts 0-2 (their own glusterd, probed
    into one pool); yields what ``mount -t glusterfs`` takes; all of it stopped and killed
    on exit (its clients too: their logs are in ``work``)."""
    hosts, procs = bed.hosts, []
    name = f"bftfswan{os.getpid()}"
    try:
        for i in range(GLUSTER_HOSTS):
            (work / f"gd{i}").mkdir()
            (work / f"brick{i}").mkdir()
            vol = work / f"gd{i}.vol"
            vol.write_text(glusterd_vol(work / f"gd{i}", hosts.address(i), work / f"gd{i}.sock"))
            cmd = ["glusterd", "-N", "-f", str(vol), "-l", str(work / f"gd{i}.log")]
            cmd += ["-p", str(work / f"gd{i}.pid")]
            procs.append(hosts.spawn(i, cmd, work / f"gd{i}.out"))
        for i in range(GLUSTER_HOSTS):
            _wait(f"glusterd {i}", functools.partial(_answers, bed, i, work))
        for i in range(1, GLUSTER_HOSTS):
            _gluster_ok(bed, work, "peer", "probe", hosts.address(i))
        peers = GLUSTER_HOSTS - 1  # each in the pool, not merely connected
        _wait(
            "the pool",
            lambda: _gluster_ok(bed, work, "peer", "status").count("Peer in Cluster") == peers,
        )
        bricks = [f"{hosts.address(i)}:{work / f'brick{i}'}" for i in range(GLUSTER_HOSTS)]
        _gluster_ok(bed, work, "volume", "create", name, "replica", "3", *bricks, "force")
        _gluster_ok(bed, work, "volume", "set", name, "cluster.self-heal-daemon", "off")
        _gluster_ok(bed, work, "volume", "start", name)
        yield f"{hosts.address(0)}:/{name}"
    finally:
        marks = (str(work).encode(), name.encode())  # the self-heal daemon names the volume
        for pid, argv in proc.command_lines():  # bricks and clients glusterd daemonised
            ours = any(m in a for a in argv for m in marks)
            if pid != os.getpid() and ours and b"glusterd" not in argv[0]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        netns.stop_all(procs)


def run_gluster(bed: wan.Wan, work: Path, inp: Inputs, args: Any) -> dict[str, float]:
    """GlusterFS's phases on a fresh replica-3 volume on ``bed``."""
    with gluster_volume(bed, work) as what, ExitStack() as mounted:
        log = f"log-file={work / 'client.log'}"

        def mount(path: Path) -> None:
            subprocess.run(["mount", "-t", "glusterfs", "-o", log, what, str(path)], check=True)

        out = workload(Mounts(mounted, mount, work, ["umount", "-l"], bed=bed), work, inp, args)
    return out


RUNNERS = {"bftfs": run_bftfs, "glusterfs": run_gluster}


def one_delay(delay: float, tmp: Path, inp: Inputs, args: Any) -> list:
    """``(system, rep, phases)`` of every run at one-way ``delay`` ms, interleaved."""
    rows = []
    systems = args.systems.split(",")
    near = wan.Link(delay, rate_mbit=args.rate, queue_ms=args.queue_ms)
    far = [] if args.far is None else [replace(near, delay_ms=args.far)]
    with wan.Wan([near] * (6 - len(far)) + far, seed=65) as bed:
        for rep in range(args.reps):
            for system in systems if rep % 2 == 0 else list(reversed(systems)):
                work = tmp / f"at{delay:g}-{system}-{rep}"
                work.mkdir()
                try:
                    out = RUNNERS[system](bed, work, inp, args)
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    print(f"{system} at {delay:g} ms failed: {e}", file=sys.stderr, flush=True)
                    continue
                print(f"{system} at {delay:g} ms: {out}", file=sys.stderr, flush=True)
                rows.append((system, rep, out))
    mib = [f"{to / 2**20:.0f}/{back / 2**20:.0f}/{drops}" for to, back, drops in bed.carried]
    print(f"MiB each link carried to/from its host, frames dropped, at {delay:g} ms: {mib}")
    print(f"the wire process's CPU: {bed.wire_cpu:.1f} s")
    return rows


#: The plot's panels: a title and the phases whose seconds it sums.
PANELS = (
    ("Andrew-like: copy + stat + read, s", ("copy", "stat", "read")),
    ("PostMark, s", ("postmark s",)),
    ("git clone + make, s", ("clone", "make")),
    ("big file: write + cold read, s", ("write big", "read big")),
)
COLOURS = {"bftfs": "#3c8d4f", "glusterfs": "#e0a040"}


def medians(table: list, phases: tuple[str, ...]) -> dict[tuple[float, str], float]:
    """(one-way delay, system) -> the median over repetitions of the sum of ``phases``."""
    got: dict[tuple[float, str], list[float]] = {}
    for delay, system, _rep, out in table:
        if all(p in out for p in phases):
            got.setdefault((delay, system), []).append(sum(out[p] for p in phases))
    return {k: statistics.median(v) for k, v in got.items()}


def plot(table: list, caption: str, path: Path) -> None:
    """Seconds against the RTT, a panel per workload measured, a line per system."""
    delays = sorted({row[0] for row in table})
    systems = list(dict.fromkeys(row[1] for row in table))
    drawn = []
    for title, phases in PANELS:
        med = medians(table, phases)
        if med:
            series = [(s, [med.get((d, s)) for d in delays], COLOURS[s]) for s in systems]
            drawn.append(chart.LinePanel(title, series))
    xs = [2 * d for d in delays]
    path.write_text(chart.lines_svg(xs, drawn, "RTT, ms", caption))


def print_tables(table: list, args: Any) -> None:
    """Every run's seconds; the medians against the RTT; the big file against its bound."""
    phases = list(dict.fromkeys(p for *_, out in table for p in out))
    print("| RTT ms | system | rep | " + " | ".join(phases) + " |")
    print("|---:|---|---:|" + "---:|" * len(phases))
    for delay, system, rep, out in table:
        cells = " | ".join(f"{out[p]:.2f}" if p in out else "-" for p in phases)
        print(f"| {2 * delay:g} | {system} | {rep} | {cells} |")
    delays = sorted({row[0] for row in table})
    print(
        "\nmedian seconds against the RTT\n\n| workload | system | "
        + " | ".join(f"{2 * d:g} ms" for d in delays)
        + " |"
    )
    print("|---|---|" + "---:|" * len(delays))
    for title, ph in PANELS:
        med = medians(table, ph)
        for system in dict.fromkeys(s for _d, s in med):
            cells = " | ".join(
                f"{med[(d, system)]:.2f}" if (d, system) in med else "-" for d in delays
            )
            print(f"| {title.removesuffix(', s')} | {system} | {cells} |")
    if args.mb and args.rate:
        print(f"\n{args.mb} MiB at {args.rate:g} Mbit/s a link, MB/s (bound: docs/wan.md)\n")
        print("| RTT ms | system | rep | write | bound | ratio | read | bound | ratio |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for delay, system, rep, out in table:
            if "read big" in out:
                bound = link_bound(system, args.rate, M) / 1e6
                w, r = (args.mb * PIECE / 1e6 / out[k] for k in ("write big", "read big"))
                print(
                    f"| {2 * delay:g} | {system} | {rep} | {w:.1f} | {bound:.1f} | "
                    f"{w / bound:.2f} | {r:.1f} | {bound:.1f} | {r / bound:.2f} |"
                )


#: bftfs's ``m`` at ``t = b = 1`` (``bftfs init``'s default): a block's data fragments.
M = 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delays", default="0,10,25,50", help="one-way ms, comma-separated")
    ap.add_argument("--rate", type=float, default=None, help="Mbit/s of each link each way")
    ap.add_argument("--queue-ms", type=float, default=None, help="each link's buffer, ms")
    ap.add_argument("--systems", default="bftfs,glusterfs", help="of: bftfs, glusterfs")
    ap.add_argument("--workloads", default="andrew,postmark,git,big", help=", ".join(WORKLOADS))
    ap.add_argument("--files", type=int, default=100, help="files in the Andrew-like tree")
    ap.add_argument("--pm-files", type=int, default=100, help="PostMark's files")
    ap.add_argument("--pm-transactions", type=int, default=300, help="PostMark's transactions")
    ap.add_argument("--units", type=int, default=30, help="C files in the git tree")
    ap.add_argument("--mb", type=int, default=0, help="MiB in the big file (0: none)")
    ap.add_argument(
        "--settle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for bftfs's verification of the big file before its read",
    )
    ap.add_argument("--reps", type=int, default=2, help="runs of each system per delay")
    ap.add_argument(
        "--far", type=float, default=None, help="host 5 (a bftfs node) this one-way ms away"
    )
    ap.add_argument("--options", default="", help="more -o options of the bftfs mounts")
    ap.add_argument("--svg", type=Path, default=None, help="the plot against the RTT")
    ap.add_argument(
        "--timeline", type=Path, default=None, help="a directory for the big file's link ticks"
    )
    args = ap.parse_args(argv)
    common.install_sigterm_handler()  # a killed run still removes its hosts and daemons
    if (why := wan.skip_reason()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    table = []
    with tempfile.TemporaryDirectory(prefix="bftfs-wan-") as tmp:
        src = Path(tmp) / "src"
        sums = make_tree(src, args.files, seed=65)
        repo, expect = git_repo(Path(tmp), args.units)
        inp = Inputs(src, sums, repo, expect)
        for delay in [float(d) for d in args.delays.split(",")]:
            for system, rep, out in one_delay(delay, Path(tmp), inp, args):
                table.append((delay, system, rep, out))
    if not table:
        return 1
    caption = (
        f"{args.workloads}: {args.files} files; PostMark {args.pm_files} files, "
        f"{args.pm_transactions} transactions; {args.units} C files; {args.mb} MiB; "
        f"{wan.mode()} links, {args.rate or 'unlimited'} Mbit/s"
        + ("" if args.far is None else f"; host 5 at {args.far:g} ms one-way")
        + "; seconds"
    )
    print(caption)
    print_tables(table, args)
    if args.svg:
        plot(table, caption, args.svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
