"""What a run cost per unit of work, printed beside its rate (issue 62).

Wall time on a shared 2-core machine moves with everything else running; what a run cost
moves much less: the CPU seconds of the FUSE daemon and of the servers (bftfs nodes,
GlusterFS bricks) from ``/proc`` (``profiling.CpuMeter``), and for bftfs what the mount did
to the nodes, from what the mount reports itself:

* **renewals**: leases renewed, ``leases.renewed`` of the mount's status file
  (``bftfs/fuse/mount.py``, ``_Book``), which the daemon rewrites every two seconds: a
  phase's end waits for a rewrite made after it (and its start for one, unless asked not
  to), so a count is late by at most one rewrite;
* **rounds** and **Q/U operations**: ``bftfs_mount_qu_rounds_total`` and the sum over
  methods of ``bftfs_mount_qu_operations_total`` of the mount's Prometheus metrics, served when the
  mount has ``-o metrics_port=`` (``common.py`` gives every bftfs mount ``metrics_port=0``;
  the status file names the address).

``Costs`` is a phase hook like the others (``hook(phase, "start"|"end")``);
``per_unit`` divides a phase by its units (transactions, files, MiB); ``cost_table``
is the Markdown table every side-by-side benchmark prints under its own.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import profiling
from common import Site

#: The mount's counters, as keys of a phase (``MountCounters``).
COUNTERS = ("renewals", "rounds", "qu_operations")
#: What ``per_unit`` gives, in the order the table shows them.
PER_UNIT = ("mount_cpu", "nodes_cpu", "renewals", "rounds")
_METRICS = {
    "rounds": "bftfs_mount_qu_rounds_total",
    "qu_operations": "bftfs_mount_qu_operations_total",
}
#: Counters the mount reports by label only: their value is the sum over the labels.
_SUMMED = ("qu_operations",)


def parse_exposition(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, ``name`` or ``name{labels}`` to value
    (comments and malformed lines left out)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def scrape(address: str) -> dict[str, float]:
    """The samples a daemon's metrics endpoint at ``address`` (host:port) serves now.

    Raises:
        OSError: it did not answer.
    """
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        return parse_exposition(r.read().decode())


def _label(sample: str, name: str) -> str:
    """The value of label ``name`` in a sample key ``metric{a="x",b="y"}`` (the whole
    label set when it has no such label)."""
    labels = sample.partition("{")[2].rstrip("}")
    for part in labels.split(","):
        k, _, v = part.partition("=")
        if k.strip() == name:
            return v.strip().strip('"')
    return labels


def _status(
    config: Any, mountpoint: Path, after: float | None, pid: int | None, wait: float
) -> dict[str, Any]:
    """The mount's status file, once written by daemon ``pid`` (if given: a remount's
    predecessor may have left its own) at or after ``after`` (epoch seconds, if given),
    or as it is after ``wait`` seconds; {} when there is none."""
    from bftfs.fuse.control import status_file

    path = status_file(config, mountpoint)
    deadline = time.monotonic() + wait
    while True:
        try:
            st: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            st = {}
        fresh = after is None or float(st.get("updated") or 0) >= after
        fresh = fresh and (pid is None or st.get("pid") == pid)
        if fresh or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def mount_counters(
    config: Any,
    mountpoint: Path,
    *,
    after: float | None = None,
    pid: int | None = None,
    wait: float = 5.0,
) -> dict[str, float]:
    """Renewals (status file), rounds and Q/U operations (metrics) of one mount so far
    (``after``, ``pid``: see ``_status``); a counter the mount does not report is left
    out."""
    st = _status(config, mountpoint, after, pid, wait)
    out: dict[str, float] = {}
    leases = st.get("leases")
    if isinstance(leases, dict):
        out["renewals"] = float(leases.get("renewed", 0))
        # Every lease counter too (grants, renewals, to_session, refused, expiries), for
        # a benchmark that records where its leases went (issue 64's b = 2).
        for k, v in leases.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"leases.{k}"] = float(v)
    if st.get("metrics"):
        try:
            samples = scrape(st["metrics"])
        except OSError:
            samples = {}
        for key, metric in _METRICS.items():
            if key in _SUMMED:
                parts = {k: v for k, v in samples.items() if k.startswith(metric + "{")}
                if parts:
                    out[key] = sum(parts.values())
                for k, v in parts.items():
                    out[f"{key}.{_label(k, 'method')}"] = v
            elif metric in samples:
                out[key] = samples[metric]
    return out


#: Seconds :func:`wait_settled` waits at most for a mount to send what it holds back.
SETTLE_CAP = 300.0


def wait_settled(site: Site, cap: float = SETTLE_CAP) -> float | None:
    """Seconds until the bftfs mount of ``site`` held nothing back (its
    ``bftfs_mount_heldback_changes`` gauge at 0: the servers have every change), polled
    every 0.1 s; None for a site that is no bftfs mount, or one that did not settle within
    ``cap`` seconds.  A run's clock stopped at the workload's end leaves out what
    write-back still sends (PostMark's last removals, hundreds of them), and the next run
    pays it: the figure of a run that ends settled is the one a user meets."""
    if site.config is None:
        return None
    st = _status(site.config, site.path, None, site.pids.get("mount"), 5.0)
    if not st.get("metrics"):
        return None
    start = time.monotonic()
    while time.monotonic() - start < cap:
        try:
            samples = scrape(st["metrics"])
        except OSError:
            return None
        if samples.get("bftfs_mount_heldback_changes", 0.0) == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    return None


class MountCounters:
    """The mounts' counters (summed over ``mountpoints``, served by the daemons ``pids``
    where known) over each phase; nothing for a site without a bftfs cluster."""

    def __init__(
        self,
        config: Any,
        mountpoints: Sequence[Path],
        pids: Sequence[int | None] = (),
        *,
        fresh_start: bool = True,
        chain: bool = False,
    ) -> None:
        self.config = config
        self.mountpoints = list(mountpoints)
        self.pids = list(pids) or [None] * len(self.mountpoints)
        self.fresh_start = fresh_start
        self.chain = chain
        self.phases: dict[str, dict[str, float]] = {}
        self._start: dict[str, float] = {}
        self._last_end: dict[str, float] | None = None

    def _snapshot(self, after: float | None) -> dict[str, float]:
        total: dict[str, float] = {}
        for m, pid in zip(self.mountpoints, self.pids, strict=True):
            for k, v in mount_counters(self.config, m, after=after, pid=pid).items():
                total[k] = total.get(k, 0.0) + v
        return total

    def __call__(self, phase: str, what: str) -> None:
        if self.config is None:
            return
        if what == "start":
            if self.chain and self._last_end is not None:
                self._start = self._last_end
            else:
                self._start = self._snapshot(time.time() if self.fresh_start else None)
            return
        end = self._last_end = self._snapshot(time.time())
        # A method's or lease counter's first count may come within the phase: it was 0.
        self.phases[phase] = {
            k: v - self._start.get(k, 0.0)
            for k, v in end.items()
            if k in self._start or ("." in k and self._start)
        }


class Costs:
    """CPU seconds per side (``profiling.CpuMeter``) and the mount's counters over each
    phase; the counters' window encloses the CPU one."""

    def __init__(
        self,
        site: Site,
        mountpoints: Sequence[Path] | None = None,
        pids: Sequence[int | None] = (),
        *,
        fresh_start: bool = True,
        chain: bool = False,
    ) -> None:
        """``mountpoints`` and their daemons' ``pids``: by default the site's one mount;
        ``fresh_start=False`` starts a phase at once, counters from the status file as
        it is (a cold read must not wait while the nodes verify: ``seqio.py``);
        ``chain=True`` starts each phase after the first from the counters its predecessor
        ended with (phases back to back: one status rewrite waited for a phase, not two)."""
        self.cpu = profiling.CpuMeter(site)
        if mountpoints is None:
            mountpoints, pids = [site.path], [site.pids.get("mount")]
        self.counters = MountCounters(
            site.config, mountpoints, pids, fresh_start=fresh_start, chain=chain
        )

    def __call__(self, phase: str, what: str) -> None:
        if what == "start":
            self.counters(phase, what)
            self.cpu(phase, what)
        else:
            self.cpu(phase, what)
            self.counters(phase, what)

    def per_unit(self, phase: str, units: float) -> dict[str, float | None]:
        return per_unit(self.cpu.phases.get(phase, {}), self.counters.phases.get(phase, {}), units)


def per_unit(
    cpu: dict[str, float], counters: dict[str, float], units: float
) -> dict[str, float | None]:
    """One phase per unit of work: CPU seconds of the FUSE daemon(s) (every ``mount*``
    group, or bindfs) and of the servers, renewals and rounds; None where not measured."""
    mounts = [v for k, v in cpu.items() if k.startswith("mount") or k == "bindfs"]

    def each(x: float | None) -> float | None:
        return None if x is None or units <= 0 else x / units

    return {
        "mount_cpu": each(sum(mounts) if mounts else None),
        "nodes_cpu": each(cpu.get("nodes")),
        "renewals": each(counters.get("renewals")),
        "rounds": each(counters.get("rounds")),
        "units": units,
    }


def median_costs(recs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per field, the median over the runs that measured it."""
    return {
        k: common.median([r[k] for r in recs if r.get(k) is not None]) for k in (*PER_UNIT, "units")
    }


def fmt_cost(x: float | None) -> str:
    """A per-unit figure: milliseconds of CPU or counts, three significant digits."""
    if x is None:
        return "-"
    return f"{x:.3g}"


def brief(c: dict[str, float | None], unit: str) -> str:
    """The costs of one run for a progress line."""
    cpu = " / ".join(
        "-" if c.get(k) is None else f"{1000 * float(c[k] or 0):.1f}"
        for k in ("mount_cpu", "nodes_cpu")
    )
    return (
        f" [CPU ms/{unit} mount/nodes {cpu}; renewals {fmt_cost(c.get('renewals'))}, "
        f"rounds {fmt_cost(c.get('rounds'))} per {unit}]"
    )


def cost_table(
    rows: Sequence[tuple[str, str, dict[str, float | None]]],
    figure: str,
    unit: str,
    twins: dict[str, tuple[str, float | None]] | None = None,
    phase: str = "",
) -> list[str]:
    """Markdown lines: per target its figure (already formatted), CPU milliseconds of the
    mount and of the servers per ``unit``, renewals and rounds per ``unit``, and for a
    variant (aged, loaded) its figure over its twin's (``twins``: name -> (what, ratio))."""
    twins = twins or {}
    lines = [
        "",
        f"Cost per {unit}{' of the ' + phase if phase else ''} (medians; CPU from /proc, "
        "renewals from the mount's status file, rounds from its metrics; servers = bftfs "
        "nodes or GlusterFS bricks; vs twin = this target's figure over its twin's):",
        "",
        f"| target | {figure} | CPU ms/{unit}: mount | servers | renewals/{unit} "
        f"| Q/U rounds/{unit} | vs twin |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, shown, c in rows:
        ms = [
            "-" if c.get(k) is None else f"{1000 * float(c[k] or 0):.3g}"
            for k in ("mount_cpu", "nodes_cpu")
        ]
        what, r = twins.get(name, ("", None))
        twin = f"{what} {common.fmt_ratio(r)}" if what else "-"
        lines.append(
            f"| {name} | {shown} | {ms[0]} | {ms[1]} | {fmt_cost(c.get('renewals'))} "
            f"| {fmt_cost(c.get('rounds'))} | {twin} |"
        )
    return lines
