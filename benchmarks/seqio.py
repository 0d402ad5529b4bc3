"""Sequential write and cold read of one big file on local, bindfs, GlusterFS and bftfs.

The workload the small-file benchmarks (Andrew, PostMark) do not show: one file of
``--size`` MiB (200 by default) written front to back and read back, as a backup or a
disk image would be.  Each repetition opens every target fresh (``benchmarks/common.py``),
interleaved (A B C D A B C D ...), and reports MB/s (10^6 bytes per second, like dd):

* **write**: ``open(O_CREAT|O_TRUNC)``, ``write()`` of ``--block`` KiB buffers (1 MiB by
  default) until the size is reached, ``fsync()``, ``close()`` - all inside the timed
  window, so the figure is the rate at which data reaches stable storage, not the page
  cache.  Each buffer carries its own index in its first 8 bytes (the rest is one random
  block), so a misplaced or missing block is caught by the read.
* **read, cold**: untimed preparation, then ``open()``, ``read()`` into one ``--block``
  buffer until end of file, ``close()``, timed.  The 8-byte index of every block is
  checked in the timed loop (cheap); the full contents are compared in an untimed pass
  afterwards (``--no-verify`` skips it).  What *cold* means for each target:

  - ``local``: ``sync`` and ``echo 3 > /proc/sys/vm/drop_caches`` (page cache, dentries,
    inodes): the file's pages come from the disk again.  On a virtual machine the host may
    still cache the virtual disk; that is below what this machine can drop.
  - ``bindfs``: the same drop clears both the FUSE file's pages and the backing file's;
    bindfs keeps no cache of its own.  The read uses a fresh ``open()``.
  - ``glusterfs``: the FUSE client is unmounted and mounted again (a new ``glusterfs``
    process: nothing of its translators' caches - quick-read, open-behind, read-ahead,
    io-cache when enabled - survives), then the drop clears the brick files' pages.  The
    bricks stay up (they hold no file data in memory of their own).
  - ``bftfs``: the mount daemon is stopped and a new one mounted on the same cluster (its
    per-file block cache goes with it), then the drop clears the nodes' LMDB pages (LMDB
    reads through mmap, so the page cache is its only cache).  The nodes stay up.

  Without root the caches cannot be dropped: the read is then marked *warm* in the results.

Each timed phase starts on free memory the benchmark has just freed (``--memory``,
``benchmarks/memstate.py``): on a VM that hands idle memory back to its host, the memory
a target's new pages come from moved a write by up to 40%.

Medians and min-max over ``--runs`` repetitions, with the CPU each side spent (workload,
FUSE daemon, servers: GlusterFS bricks or bftfs nodes) from /proc, and the FUSE daemon's
peak resident memory in each phase (``VmHWM``; the read's daemon is a fresh one).

Faults (issue 34): ``bftfs-down`` kills ``--down`` nodes before the mount (node 0 first:
a data fragment's node), ``bftfs-corrupt`` runs them with ``--byzantine
corrupt-fragments`` (every fragment they serve fails its check); the table then compares
their cold reads with the healthy bftfs target's.  ``--profile`` adds one untimed bftfs
run under py-spy: CPU seconds per GiB of each part of the data path (erasure code, hash,
AEAD, LMDB, msgpack, socket I/O, copies, trio's loop, the rest), daemon and nodes.
``--settled`` times a second cold read of each run once the bftfs nodes' lazy
verification of the file finished (polled, untimed): reading a big file written earlier,
where the first read shares the CPU with that verification and regenerates the blocks not
yet flagged verified (issue 34, third pass).

Results: ``benchmarks/results/seqio.{json,md,png}`` (``--name`` for another stem).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import costs  # noqa: E402
import memstate  # noqa: E402
import profiling  # noqa: E402
import variants  # noqa: E402
from common import Progress, Site, TargetSpec  # noqa: E402

MiB = 1 << 20
MB = 1_000_000
HEADER = 8  # bytes of each block that carry its index


class SeqIOError(RuntimeError):
    """The file read back differs from what was written, or an I/O call failed."""


def make_block(size: int, seed: int) -> bytes:
    """One block of pseudo-random bytes (not zeros: nothing on the way may compress or
    skip them); every written block is this one with its index in the first 8 bytes."""
    return random.Random(seed).randbytes(size)


def write_file(path: Path, size: int, block: bytes) -> float:
    """Write ``size`` bytes (whole blocks and a last partial one) then fsync and close;
    the seconds from open to close."""
    buf = bytearray(block)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done, i = 0, 0
        while done < size:
            n = min(len(buf), size - done)
            buf[:HEADER] = i.to_bytes(HEADER, "little")
            chunk = view[:n]
            while chunk:
                w = os.write(fd, chunk)
                chunk = chunk[w:]
            done += n
            i += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def read_file(path: Path, size: int, block_size: int) -> float:
    """Read the whole file with a fresh open, checking each block's index; the seconds.

    Raises:
        SeqIOError: a block's index or the file's size is not what was written.
    """
    buf = bytearray(block_size)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        done, i = 0, 0
        while True:
            # Fill one whole block (a FUSE read may return less), so block i is at i*size.
            got = 0
            while got < block_size:
                n = os.readv(fd, [view[got:]])
                if n == 0:
                    break
                got += n
            if got == 0:
                break
            if int.from_bytes(buf[:HEADER], "little") != i:
                raise SeqIOError(f"block {i} at offset {done} carries another index")
            done += got
            i += 1
            if got < block_size:
                break
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    if done != size:
        raise SeqIOError(f"read {done} bytes, wrote {size}")
    return elapsed


def verify_file(path: Path, size: int, block: bytes) -> None:
    """Compare every byte with what was written (untimed).

    Raises:
        SeqIOError: the contents differ.
    """
    expect = bytearray(block)
    with open(path, "rb", buffering=0) as f:
        done, i = 0, 0
        while done < size:
            n = min(len(expect), size - done)
            expect[:HEADER] = i.to_bytes(HEADER, "little")
            got = f.read(n)
            while len(got) < n:
                more = f.read(n - len(got))
                if not more:
                    break
                got += more
            if got != expect[:n]:
                raise SeqIOError(f"block {i} (offset {done}) differs from what was written")
            done += n
            i += 1


def peak_rss_mib(site: Site) -> float | None:
    """The FUSE daemon's peak resident memory so far (``VmHWM``), MiB; None without one.
    The read is served by a fresh daemon (the remount), so each phase has its own peak."""
    pid = site.pids.get("mount", site.pids.get("bindfs"))
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def wait_verified(site: Site, limit: float = 120.0) -> float | None:
    """Seconds until every bftfs node's lazy verifier has nothing left to verify (its
    backlog of versions empty), polled from the nodes' statistics; 0 for other targets
    (nothing to wait for), None if ``limit`` passed first.  Untimed: what the ``--settled``
    read then measures is a cold read of a file the nodes have verified, as reading a big
    file written earlier is (issue 34, third pass: the read right after the write shares
    the CPU with the nodes' verification of it and regenerates what they have not flagged)."""
    if site.config is None:
        return 0.0
    import trio

    from bftfs.local import query_status

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        try:
            statuses = trio.run(lambda: query_status(site.config, timeout=2.0, client="client1"))
        except Exception:  # a diagnostic poll: a failed one is tried again
            statuses = []
        left = [
            int(
                ((st.stats or {}).get("progress") or {})
                .get("rw.verify", {})
                .get("backlog_versions", 1)
            )
            for st in statuses
            if st.up
        ]
        if left and not any(left):
            return time.perf_counter() - t0
        time.sleep(0.2)  # a benchmark's poll of another process, not a test's synchronisation
    return None


def make_cold(site: Site) -> str | None:
    """Everything a cold read needs (see the module docstring); None, or why it is warm."""
    if site.remount is not None:
        site.remount()
    return memstate.drop_caches()


def one_run(
    site: Site, args: argparse.Namespace, block: bytes, profile: Path | None = None
) -> dict[str, Any]:
    """Write, make cold, read, verify in ``site``; rates, times and CPU per phase (and with
    ``profile``, py-spy recordings of the daemon and every node, CPU seconds per part)."""
    path = site.path / "seqio.dat"
    rec: dict[str, Any] = {}
    why_not = memstate.prepare(args.memory, args.size)
    rec["memory"] = args.memory if why_not is None else f"as-is: {why_not}"
    hooks = _hooks(site, profile)
    for h in hooks:
        h("write", "start")
    try:
        rec["write_s"] = write_file(path, args.size_bytes, block)
    finally:
        for h in reversed(hooks):
            h("write", "end")
    rss = {"write": peak_rss_mib(site)}
    wcpu = hooks[0]
    why_warm = make_cold(site)
    rec["cold"] = why_warm is None
    if why_warm:
        rec["warm_reason"] = why_warm
    else:
        memstate.prepare(args.memory, args.size, dropped=True)
    rhooks = _hooks(site, profile)  # made after the remount: the new daemon's pid
    for h in rhooks:
        h("read", "start")
    try:
        rec["read_s"] = read_file(path, args.size_bytes, len(block))
    finally:
        for h in reversed(rhooks):
            h("read", "end")
    rss["read"] = peak_rss_mib(site)
    if rss["write"] is not None:
        rec["daemon_peak_rss_mib"] = rss
    rcpu = rhooks[0]
    if args.settled:
        rec.update(_settled_read(site, args, block, path))
    if profile is not None:
        rec["node_counters"] = {**hooks[3].phases, **rhooks[3].phases}
        rec["parts"] = {
            **_parts(hooks, "write", profile),
            **_parts(rhooks, "read", profile),
        }
    rec["cpu"] = {**wcpu.phases, **rcpu.phases}
    rec["costs"] = {
        "write": hooks[-1].per_unit("write", args.size),
        "read": rhooks[-1].per_unit("read", args.size),
    }
    rec["write_MBps"] = args.size_bytes / MB / rec["write_s"]
    rec["read_MBps"] = args.size_bytes / MB / rec["read_s"]
    if args.verify:
        verify_file(path, args.size_bytes, block)
        rec["verified"] = True
    return rec


def _settled_read(site: Site, args: argparse.Namespace, block: bytes, path: Path) -> dict[str, Any]:
    """The ``--settled`` phase: once the nodes verified the file (:func:`wait_verified`),
    cold again, the same timed read."""
    rec: dict[str, Any] = {"settle_wait_s": wait_verified(site)}
    make_cold(site)
    hooks = _hooks(site, None)
    for h in hooks:
        h("settled", "start")
    try:
        rec["settled_s"] = read_file(path, args.size_bytes, len(block))
    finally:
        for h in reversed(hooks):
            h("settled", "end")
    rec["settled_cpu"] = hooks[0].phases.get("settled", {})
    rec["settled_MBps"] = args.size_bytes / MB / rec["settled_s"]
    return rec


class _ProcessCpu:
    """CPU seconds of each watched process (daemon, every node) over a phase."""

    def __init__(self, site: Site) -> None:
        self.pids = dict(site.pids)
        self.phases: dict[str, dict[str, float]] = {}
        self._start: dict[str, float] = {}

    def __call__(self, phase: str, what: str) -> None:
        now = {w: profiling.cpu_seconds(p) or 0.0 for w, p in self.pids.items()}
        if what == "start":
            self._start = now
        else:
            self.phases[phase] = {w: now[w] - self._start.get(w, 0.0) for w in now}


def _hooks(site: Site, profile: Path | None) -> list[Any]:
    """The CPU meter, with ``profile`` per-process CPU and py-spy on every process, and
    last the costs per MiB (``costs.Costs``: a phase starts at once, see there)."""
    hooks: list[Any] = [profiling.CpuMeter(site)]
    if profile is not None:
        watch = tuple(site.pids)
        hooks += [
            _ProcessCpu(site),
            profiling.Profiler(site, profile, watch, lines=True),
            profiling.NodeCounter(site),
        ]
    return [*hooks, costs.Costs(site, fresh_start=False)]


def _parts(hooks: list[Any], phase: str, profile: Path) -> dict[str, Any]:
    """CPU seconds per part of the data path: the daemon's, and the nodes' summed."""
    per_process: dict[str, float] = hooks[1].phases[phase]
    daemon: dict[str, float] = {}
    nodes: dict[str, float] = {}
    for w, cpu in per_process.items():
        into = nodes if w.startswith("node") else daemon
        for part, s in profiling.parts_of_profile(profile / f"{phase}-{w}.txt", cpu).items():
            into[part] = round(into.get(part, 0.0) + s, 3)
    return {phase: {"daemon": daemon, "nodes": nodes, "processes": per_process}}


def run_profile(
    args: argparse.Namespace, spec: TargetSpec, progress: Progress, work: Path, block: bytes
) -> dict[str, Any]:
    """One untimed run of ``spec`` under py-spy: CPU seconds per part and process."""
    out = args.out / f"{args.name}-profile"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    progress(f"profile run (untimed) on {spec.name} with py-spy -> {out}")
    try:
        with common.open_target(spec, work, "prof") as site:
            rec = one_run(site, args, block, profile=out)
    except (common.TargetError, SeqIOError, OSError, RuntimeError) as e:
        progress(f"profile run failed: {e}")
        return {"error": str(e)}
    gib = args.size_bytes / (1 << 30)
    per_gib = {
        ph: {
            side: {k: round(v / gib, 3) for k, v in parts.items()}
            for side, parts in rec["parts"][ph].items()
            if side != "processes"
        }
        for ph in PHASES
    }
    return {**rec, "cpu_s_per_gib": per_gib}


def measure(
    args: argparse.Namespace,
    specs: list[TargetSpec],
    progress: Progress,
    work: Path,
    skipped: dict[str, str],
) -> list[dict[str, Any]]:
    """The interleaved runs; a peer whose set-up fails goes into ``skipped``."""
    block = make_block(args.block * 1024, args.seed)
    runs: list[dict[str, Any]] = []
    for rep in range(args.runs):
        for spec in specs:
            if spec.name in skipped:
                continue
            progress(f"run {rep + 1}/{args.runs} {spec.name:<12}", end="")
            rec: dict[str, Any] = {"target": spec.name, "rep": rep}
            try:
                with variants.open_target(spec, work, f"r{rep}", args, progress) as site:
                    rec["setup_s"] = round(site.setup_s, 3)
                    rec["info"] = site.info
                    with common.Watchdog(site, args.timeout):
                        rec.update(one_run(site, args, block))
            except (common.TargetError, SeqIOError, OSError, RuntimeError) as e:
                rec["error"] = str(e)
                progress.more(f" FAILED: {str(e).splitlines()[0][:200]}", end="\n")
                if common.skip_after_failure(spec, e, skipped):
                    progress(f"{spec.name}: skipped from now on (see the results)")
            else:
                warm = "" if rec["cold"] else f" (WARM: {rec['warm_reason']})"
                progress.more(
                    f" write {rec['write_MBps']:.1f} MB/s ({common.fmt_s(rec['write_s'])}), "
                    f"read {rec['read_MBps']:.1f} MB/s ({common.fmt_s(rec['read_s'])}){warm}"
                    + _read_detail(rec)
                    + (
                        f", settled read {rec['settled_MBps']:.1f} MB/s"
                        if "settled_MBps" in rec
                        else ""
                    )
                    + costs.brief(rec["costs"]["read"], "MiB read"),
                    end="\n",
                )
            runs.append(rec)
    return runs


# Results ----------------------------------------------------------------------------------

PHASES = ("write", "read")


def _read_detail(rec: dict[str, Any]) -> str:
    """The read's CPU seconds, daemon / nodes (a status query around the read would
    delay its start while the nodes verify, and change what it measures)."""
    cpu = rec.get("cpu", {}).get("read", {})
    if "nodes" not in cpu:
        return ""
    return f" [read CPU {cpu.get('mount', 0):.2f} / {cpu['nodes']:.2f} s]"


def summarise(runs: list[dict[str, Any]], specs: list[TargetSpec]) -> dict[str, Any]:
    """Per target: median and min-max MB/s of each phase, median CPU per side."""
    out: dict[str, Any] = {}
    for spec in specs:
        mine = [r for r in runs if r["target"] == spec.name]
        ok = [r for r in mine if "read_MBps" in r]
        entry: dict[str, Any] = {
            "kind": spec.kind,
            "runs": len(ok),
            "cold_runs": sum(1 for r in ok if r.get("cold")),
            "errors": [r["error"] for r in mine if "error" in r],
        }
        for ph in PHASES:
            rates = [r[f"{ph}_MBps"] for r in ok]
            entry[f"{ph}_MBps_median"] = common.median(rates)
            entry[f"{ph}_MBps_min_max"] = common.spread(rates)
            peaks = [r["daemon_peak_rss_mib"][ph] for r in ok if "daemon_peak_rss_mib" in r]
            entry[f"{ph}_daemon_peak_rss_mib_max"] = max(peaks) if peaks else None
            entry[f"{ph}_costs"] = costs.median_costs([r["costs"][ph] for r in ok if "costs" in r])
            entry[f"{ph}_cpu_median"] = {
                k: common.median([r["cpu"][ph][k] for r in ok if k in r["cpu"].get(ph, {})])
                for k in ("wall", "workload", "mount", "bindfs", "nodes")
                if any(k in r["cpu"].get(ph, {}) for r in ok)
            }
        settled = [r for r in ok if "settled_MBps" in r]
        if settled:
            rates = [r["settled_MBps"] for r in settled]
            entry["settled_MBps_median"] = common.median(rates)
            entry["settled_MBps_min_max"] = common.spread(rates)
            entry["settled_cpu_median"] = {
                k: common.median([r["settled_cpu"][k] for r in settled if k in r["settled_cpu"]])
                for k in ("wall", "workload", "mount", "bindfs", "nodes")
                if any(k in r["settled_cpu"] for r in settled)
            }
            waits = [r["settle_wait_s"] for r in settled if r.get("settle_wait_s") is not None]
            entry["settle_wait_s_max"] = max(waits) if waits else None
        out[spec.name] = entry
    return out


def _rss_cell(s: dict[str, Any]) -> str:
    w, r = s.get("write_daemon_peak_rss_mib_max"), s.get("read_daemon_peak_rss_mib_max")
    return "-" if w is None else f"{w:.0f} / {r:.0f}"


def _cpu_cell(c: dict[str, Any]) -> str:
    daemon = c.get("mount", c.get("bindfs"))
    return " / ".join(common.fmt_s(x) for x in (c.get("workload"), daemon, c.get("nodes")))


def _settled_markdown(summary: dict[str, Any]) -> list[str]:
    """The ``--settled`` table: the cold read once the nodes verified the file."""
    have = {n: s for n, s in summary.items() if s.get("settled_MBps_median") is not None}
    if not have:
        return []
    lines = [
        "",
        "Cold read again once the bftfs nodes' lazy verification of the file finished "
        "(`--settled`; untimed wait, then remount and drop caches as before; the other "
        "targets have nothing to wait for):",
        "",
        "| target | settled cold read MB/s | min-max | CPU s: workload / daemon / servers "
        "| wait s (max) |",
        "|---|---:|---:|---|---:|",
    ]
    for name, s in have.items():
        lo, hi = s["settled_MBps_min_max"]
        wait = s.get("settle_wait_s_max")
        lines.append(
            f"| {name} | {s['settled_MBps_median']:.1f} | {lo:.1f}-{hi:.1f} "
            f"| {_cpu_cell(s['settled_cpu_median'])} | {'-' if wait is None else f'{wait:.1f}'} |"
        )
    ref = have.get("glusterfs")
    if ref is not None:
        for name, s in have.items():
            if s["kind"] == "bftfs":
                r = common.ratio(s["settled_MBps_median"], ref["settled_MBps_median"])
                lines.append(f"| {name} / glusterfs | {common.fmt_ratio(r)} | | | |")
    return lines


def _memory_note(cfg: dict[str, Any]) -> str:
    """The free memory each phase started from (benchmarks/memstate.py)."""
    state = cfg.get("memory", "as-is")
    if state == "as-is":
        return " Free memory as the previous target left it."
    reporting = "" if cfg.get("free_page_reporting") else " (this kernel reports no free pages)"
    return (
        " Each timed phase started on free memory just freed by the benchmark (as on a "
        f"machine full of page cache; benchmarks/memstate.py){reporting}."
    )


def markdown(result: dict[str, Any]) -> str:
    cfg, summary = result["config"], result["summary"]
    cold = all(s["cold_runs"] == s["runs"] for s in summary.values())
    lines = [
        f"### Sequential I/O of one {cfg['size_mib']} MiB file ({result['date']})",
        "",
        f"{cfg['size_bytes'] / MB:.1f} MB written with {cfg['block_kib']} KiB write() calls, "
        "then fsync and close (all timed); read back with a fresh open after "
        + (
            "dropping the page cache (and restarting the FUSE client of glusterfs and bftfs)"
            if cold
            else "NOT dropping the page cache in every run (see the JSON: warm reads)"
        )
        + f". MB/s = 10^6 bytes/s; median of {cfg['runs']} interleaved run(s) per target, "
        "each on a fresh target; bftfs t="
        f"{cfg['t']}, b={cfg['b']}, durable={not cfg['no_durable']}."
        + common.peers_note(result)
        + _memory_note(cfg),
        "",
        "| target | write MB/s | min-max | read MB/s (cold) | min-max "
        "| write CPU s: workload / daemon / servers | read CPU s "
        "| daemon peak RSS MiB (write / read) |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]

    def rate(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    def mm(x: tuple[float, float] | None) -> str:
        return "-" if x is None else f"{x[0]:.1f}-{x[1]:.1f}"

    for name, s in summary.items():
        lines.append(
            f"| {name} | {rate(s['write_MBps_median'])} | {mm(s['write_MBps_min_max'])} "
            f"| {rate(s['read_MBps_median'])} | {mm(s['read_MBps_min_max'])} "
            f"| {_cpu_cell(s['write_cpu_median'])} | {_cpu_cell(s['read_cpu_median'])} "
            f"| {_rss_cell(s)} |"
        )
    refs = [
        n
        for n in ("local", "bindfs", "glusterfs", "seaweedfs", "moosefs", "cephfs")
        if summary.get(n, {}).get("runs")
    ]
    bft = [n for n, s in summary.items() if s["kind"] == "bftfs" and s["runs"]]
    if refs and bft:
        lines += ["", "| ratio (bftfs / reference) | write | read |", "|---|---:|---:|"]
        for b in bft:
            for r in refs:
                w = common.ratio(summary[b]["write_MBps_median"], summary[r]["write_MBps_median"])
                rd = common.ratio(summary[b]["read_MBps_median"], summary[r]["read_MBps_median"])
                lines.append(f"| {b} / {r} | {common.fmt_ratio(w)} | {common.fmt_ratio(rd)} |")
    for ph in PHASES:
        rows = [
            (n, rate(s[f"{ph}_MBps_median"]), s.get(f"{ph}_costs") or {})
            for n, s in summary.items()
        ]
        figure = {n: s[f"{ph}_MBps_median"] for n, s in summary.items()}
        twins = variants.ratios(result.get("twins", {}), figure)
        lines += costs.cost_table(rows, f"{ph} MB/s", "MiB", twins, phase=ph)
    lines += _settled_markdown(summary)
    healthy = next((n for n, s in summary.items() if s["kind"] == "bftfs" and s["runs"]), None)
    faulty = [n for n in bft if n != healthy and ("down)" in n or "corrupting)" in n) and healthy]
    if healthy and faulty:
        lines += [
            "",
            f"| faults: read MB/s against {healthy}'s (issue 34: at least half) | read | ratio |",
            "|---|---:|---:|",
        ]
        for n in faulty:
            got = summary[n]["read_MBps_median"]
            r = common.ratio(got, summary[healthy]["read_MBps_median"])
            lines.append(f"| {n} | {rate(got)} | {common.fmt_ratio(r)} |")
    skipped = result.get("skipped") or {}
    lines += common.skipped_markdown(skipped)
    errs = {n: s["errors"] for n, s in summary.items() if s["errors"] and n not in skipped}
    if errs:
        lines += ["", "Failed runs:"]
        for n, es in errs.items():
            lines.append(f"- {n}: {len(es)} failed; first: `{es[0].splitlines()[0][:300]}`")
    lines += common.machine_markdown(result)
    if cfg.get("note"):
        lines += ["", cfg["note"]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    summary = result["summary"]
    names = [n for n, s in summary.items() if s["runs"]]
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        s = summary[n]
        med = [s[f"{ph}_MBps_median"] for ph in PHASES]
        lo = [m - s[f"{ph}_MBps_min_max"][0] for m, ph in zip(med, PHASES, strict=True)]
        hi = [s[f"{ph}_MBps_min_max"][1] - m for m, ph in zip(med, PHASES, strict=True)]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(PHASES))]
        bars = ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=n, color=common.colour_for(n))
        ax.bar_label(bars, labels=[f"{m:.0f}" for m in med], fontsize=7, padding=2)
    ax.set_xticks(range(len(PHASES)), ["write (incl. fsync)", "read (cold)"])
    ax.set_ylabel("MB/s (median; bars: min-max)")
    ax.set_yscale("log")
    cfg = result["config"]
    ax.set_title(
        f"Sequential I/O, one {cfg['size_mib']} MiB file, {cfg['runs']} run(s)\n"
        f"({result['date']}, {str(result['commit']['commit'])[:10]})",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# The run ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Sequential write (with fsync) and cold read of one big file on the "
        "local disk, bindfs, GlusterFS replica 3 and bftfs, interleaved; MB/s.",
        epilog="Results go to benchmarks/results/seqio.{json,md,png}. Cold reads need root "
        "(/proc/sys/vm/drop_caches).",
    )
    ap.add_argument(
        "--size",
        type=int,
        default=200,
        help="file size in MiB (default 200; 1024 for issue 34's 1 GiB, whose table shows "
        "the FUSE daemon's peak RSS)",
    )
    ap.add_argument(
        "--block", type=int, default=1024, help="KiB per write() and read() (default 1024)"
    )
    ap.add_argument("--runs", type=int, default=3, help="repetitions per target (default 3)")
    ap.add_argument(
        "--targets",
        default="local,bindfs,glusterfs,bftfs",
        help="comma-separated, in interleaving order: local, bindfs, glusterfs, seaweedfs, "
        "moosefs, cephfs, bftfs, "
        "bftfs-down (--down nodes killed), bftfs-corrupt (--down nodes, at least one, "
        "corrupting every fragment they serve), bftfs-noverify "
        "(default local,bindfs,glusterfs,bftfs)",
    )
    ap.add_argument("--t", type=int, default=1, help="bftfs: faulty nodes tolerated (default 1)")
    ap.add_argument("--b", type=int, default=1, help="bftfs: Byzantine among them (default 1)")
    ap.add_argument(
        "--down", type=int, default=1, help="bftfs-down: nodes SIGKILLed before the mount"
    )
    ap.add_argument(
        "--no-durable",
        action="store_true",
        help="bftfs nodes acknowledge before fsync (default: durable)",
    )
    ap.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare every byte read back, untimed (default: yes)",
    )
    ap.add_argument("--seed", type=int, default=19, help="seed of the data block")
    ap.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds a run may take before the FUSE daemon is killed (default 900)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        help="scratch directory on the local disk (default: a temporary directory under /var/tmp)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="one more bftfs run, untimed, under py-spy: CPU seconds per GiB of each part "
        "of the data path, daemon and nodes (results/<name>-profile/)",
    )
    ap.add_argument(
        "--settled",
        action="store_true",
        help="after each cold read, wait (untimed) until the bftfs nodes verified the file, "
        "then time a second cold read: reading a big file written earlier",
    )
    ap.add_argument(
        "--memory",
        choices=memstate.STATES,
        default="hot",
        help="free memory before each timed phase (benchmarks/memstate.py): hot = just "
        "freed by this benchmark, as on a machine full of page cache (default); as-is = "
        "whatever the previous target left",
    )
    ap.add_argument("--note", help="a sentence added under the table (e.g. the conditions)")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results directory")
    ap.add_argument("--name", default="seqio", help="results file stem (default seqio)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    variants.add_arguments(ap, attacks=True)
    args = ap.parse_args(argv)
    if args.size <= 0 or args.block <= 0 or args.runs < 0 or not (args.runs or args.profile):
        ap.error("--size and --block must be positive, --runs too unless --profile")
    args.size_bytes = args.size * MiB
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("seqio", args.quiet)
    specs: list[TargetSpec] = []
    for w in [t.strip() for t in args.targets.split(",") if t.strip()]:
        spec = common.spec_named(w, args.t, args.b, not args.no_durable, args.down)
        if spec is None:
            raise SystemExit(
                f"unknown target {w!r} "
                "(local, bindfs, glusterfs, seaweedfs, moosefs, cephfs, "
                "bftfs, bftfs-down, bftfs-corrupt, bftfs-noverify, "
                "bftfs-plain)"
            )
        specs.append(spec)
    specs = variants.expand_args(specs, args)
    skipped = common.skip_reasons(specs)
    for name, why in skipped.items():
        progress(f"{name} skipped: {why}")
    specs = [s for s in specs if s.name not in skipped]
    if os.geteuid() != 0:
        progress("not root: the page cache cannot be dropped, reads will be warm")
    progress(
        f"{args.size} MiB file, {args.block} KiB calls; {args.runs} run(s) x {len(specs)} "
        f"targets ({', '.join(s.name for s in specs)})"
    )
    machine = common.machine_info()
    date = common.now_utc()
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bftfs-seqio-", dir=args.work or "/var/tmp"))
    free = shutil.disk_usage(work).free
    profile: dict[str, Any] = {}
    try:
        runs = measure(args, specs, progress, work, skipped)
        if args.profile:
            spec = next((s for s in specs if s.kind == "bftfs" and not s.down), None)
            if spec is None:
                progress("--profile: no bftfs target to profile")
            else:
                block = make_block(args.block * 1024, args.seed)
                profile = run_profile(args, spec, progress, work, block)
                progress(f"profile: {profile.get('cpu_s_per_gib', profile)}")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    machine["scratch_free_bytes"] = free
    summary = summarise(runs, specs)
    result = {
        "benchmark": "seqio",
        "date": date,
        "machine": machine,
        "commit": common.commit_info(),
        "config": {
            "size_mib": args.size,
            "size_bytes": args.size_bytes,
            "block_kib": args.block,
            "runs": args.runs,
            "targets": [s.name for s in specs],
            "t": args.t,
            "b": args.b,
            "no_durable": args.no_durable,
            "verify": args.verify,
            "settled": args.settled,
            "seed": args.seed,
            "memory": args.memory,
            "free_page_reporting": memstate.reporting(),
            "note": args.note,
            "bftfs_cluster": next(
                (r["info"] for r in runs if r.get("info") and "n" in r["info"]), None
            ),
            "glusterfs": next(
                (r["info"] for r in runs if r.get("info") and "volume" in r["info"]), None
            ),
            **variants.config(args),
        },
        "twins": variants.twins(specs),
        "runs": runs,
        "summary": summary,
        "profile": profile,
        "skipped": skipped,
    }
    md = common.write_results(
        args.out, args.name, result, markdown, plot, progress, with_plot=not args.no_plot
    )
    print(md)
    return 0 if all(s["runs"] for n, s in summary.items() if n not in skipped) else 1


if __name__ == "__main__":
    sys.exit(main())
