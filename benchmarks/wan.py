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

A markdown table of seconds per phase is printed; nothing is saved.  Needs root,
iproute2, FUSE, ``postmark`` and GlusterFS (``make setup-tests``,
``scripts/setup-bench.sh``); a GlusterFS step that fails is reported and its row left out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bftfs import proc
from bftfs.testing import netns, wan

PIECE = 1 << 20


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
    piece = random.Random(mb).randbytes(PIECE)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())


def read_big(path: Path, mb: int) -> None:
    with open(path, "rb") as f:
        got = sum(len(b) for b in iter(lambda: f.read(PIECE), b""))
    if got != mb * PIECE:
        raise RuntimeError(f"read {got} bytes of {mb * PIECE}")


def mount(stack: ExitStack, config: Path, mnt: Path) -> Path:
    mnt.mkdir()
    wan.bftfs_cli("mount", "--config", str(config), "-o", "client=client0", str(mnt))
    stack.callback(wan.bftfs_cli, "umount", str(mnt), check=False)
    return mnt


def postmark(root: Path, work: Path, files: int, transactions: int) -> dict[str, float]:
    """One PostMark run in ``root/pm`` (the real program, seed 42, its default sizes):
    seconds of the whole run, and transactions per second over it."""
    (root / "pm").mkdir()
    cfg = work / f"pm-{time.monotonic_ns()}.cfg"
    cfg.write_text(
        f"set location {root / 'pm'}\nset number {files}\nset transactions {transactions}\n"
        "set seed 42\nrun\nquit\n"
    )
    run = ["postmark", str(cfg)]
    seconds = timed(lambda: subprocess.run(run, check=True, capture_output=True, timeout=3600))
    return {"postmark s": seconds, "postmark tps": transactions / seconds}


def workload(mnt: Path, work: Path, src: Path, sums: dict[str, str], args: Any) -> dict:
    """The Andrew-like phases and the small PostMark on ``mnt``."""
    out: dict[str, float] = {}
    cp = ["cp", "-r", str(src), str(mnt / "tree")]
    out["copy"] = timed(lambda: subprocess.run(cp, check=True))
    out["stat"] = timed(lambda: stat_all(mnt / "tree"))
    out["read"] = timed(lambda: read_all(mnt / "tree", sums))
    out.update(postmark(mnt, work, args.pm_files, args.pm_transactions))
    return out


def run_bftfs(bed: wan.Wan, work: Path, src: Path, sums: dict[str, str], args: Any) -> dict:
    """bftfs's phases on a fresh cluster on ``bed``."""
    with ExitStack() as stack:
        config = stack.enter_context(wan.cluster(bed, work / "admin"))
        with ExitStack() as first:
            mnt = mount(first, config, work / "m1")
            out = workload(mnt, work, src, sums, args)
            if args.mb:
                out["write MB"] = timed(lambda: write_big(mnt / "big", args.mb))
        if args.mb:
            mnt = mount(stack, config, work / "m2")
            out["read MB"] = timed(lambda: read_big(mnt / "big", args.mb))
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
def gluster_mount(bed: wan.Wan, work: Path) -> Iterator[Path]:
    """A replica-3 volume with a brick on each of hosts 0-2 (their own glusterd, probed
    into one pool), mounted at ``work/gmnt`` in the root namespace; all of it stopped,
    unmounted and killed on exit."""
    hosts, procs = bed.hosts, []
    name = f"bftfswan{os.getpid()}"
    mnt = work / "gmnt"
    mnt.mkdir()
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
        log = f"log-file={work / 'client.log'}"
        what = f"{hosts.address(0)}:/{name}"
        subprocess.run(["mount", "-t", "glusterfs", "-o", log, what, str(mnt)], check=True)
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        mark = str(work).encode()
        for pid, argv in proc.command_lines():  # bricks and clients glusterd daemonised
            if pid != os.getpid() and any(mark in a for a in argv) and b"glusterd" not in argv[0]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        netns.stop_all(procs)


def run_gluster(bed: wan.Wan, work: Path, src: Path, sums: dict[str, str], args: Any) -> dict:
    with gluster_mount(bed, work) as mnt:
        return workload(mnt, work, src, sums, args)


RUNNERS = {"bftfs": run_bftfs, "glusterfs": run_gluster}


def one_delay(delay: float, tmp: Path, src: Path, sums: dict[str, str], args: Any) -> list:
    """``(system, rep, phases)`` of every run at one-way ``delay`` ms, interleaved."""
    rows = []
    with wan.Wan([wan.Link(delay)] * 6, seed=65) as bed:
        for rep in range(args.reps):
            order = list(RUNNERS) if rep % 2 == 0 else list(reversed(RUNNERS))
            for system in order:
                work = tmp / f"at{delay:g}-{system}-{rep}"
                work.mkdir()
                try:
                    out = RUNNERS[system](bed, work, src, sums, args)
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    print(f"{system} at {delay:g} ms failed: {e}", file=sys.stderr, flush=True)
                    continue
                print(f"{system} at {delay:g} ms: {out}", file=sys.stderr, flush=True)
                rows.append((system, rep, out))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delays", default="10,25", help="one-way ms, comma-separated")
    ap.add_argument("--files", type=int, default=200, help="files in the Andrew-like tree")
    ap.add_argument("--pm-files", type=int, default=200, help="PostMark's files")
    ap.add_argument("--pm-transactions", type=int, default=500, help="PostMark's transactions")
    ap.add_argument("--mb", type=int, default=0, help="MiB in the big file (0: none)")
    ap.add_argument("--reps", type=int, default=2, help="runs of each system per delay")
    args = ap.parse_args(argv)
    if (why := wan.skip_reason()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    table = []
    with tempfile.TemporaryDirectory(prefix="bftfs-wan-") as tmp:
        src = Path(tmp) / "src"
        sums = make_tree(src, args.files, seed=65)
        for delay in [float(d) for d in args.delays.split(",")]:
            for system, rep, out in one_delay(delay, Path(tmp), src, sums, args):
                table.append((delay, system, rep, out))
    if not table:
        return 1
    phases = list(dict.fromkeys(p for *_, out in table for p in out))
    print(
        f"{args.files} files; PostMark {args.pm_files} files, {args.pm_transactions} "
        f"transactions; {wan.mode()} links; seconds (tps: transactions per second)"
    )
    print("| RTT ms | system | rep | " + " | ".join(phases) + " |")
    print("|---:|---|---:|" + "---:|" * len(phases))
    for delay, system, rep, out in table:
        cells = " | ".join(f"{out[p]:.2f}" if p in out else "-" for p in phases)
        print(f"| {2 * delay:g} | {system} | {rep} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
