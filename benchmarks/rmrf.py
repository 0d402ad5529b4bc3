"""``rm -rf`` of a directory of N small files, and what each phase cost (issue 62).

On a fresh bftfs cluster (``common.open_target``: the benchmarks' cluster, leases on) per
size N: ``for i in $(seq N); do echo x > d/f$i; done`` then ``rm -rf d``.  Printed per
phase (one JSON line per N): seconds, CPU seconds of the mount and of each node
(``/proc``), the mount's Q/U operations by method (its metrics,
``bftfs_mount_qu_operations_total``; a ``leased`` one was answered in the mount) and the
change of its lease counters (its status file).  ``--spy`` records py-spy (``--spy-bin``)
of the mount and of node 0 during the removal, as raw folded stacks in ``--out``.

    .venv/bin/python benchmarks/rmrf.py --sizes 1000,2000,3000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import costs  # noqa: E402

OPS = "bftfs_mount_qu_operations_total"


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(site: common.Site) -> tuple[dict[str, float], dict[str, float]]:
    """The mount's Q/U operations by method and its numeric lease counters."""
    from bftfs.fuse.control import status_file

    st = json.loads(status_file(site.config, site.path).read_text())
    samples = costs.scrape(st["metrics"])
    ops = {k.split('"')[1]: v for k, v in samples.items() if k.startswith(OPS + "{")}
    leases = {k: float(v) for k, v in st.get("leases", {}).items() if isinstance(v, int | float)}
    return ops, leases


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a.get(k, 0.0) for k in sorted(b) if b[k] != a.get(k, 0.0)}


def to_nodes(ops: dict[str, float]) -> float:
    """The Q/U operations that reached the nodes (not those the mount answered itself:
    ``leased ...`` from its leases, ``known ...`` from what it knows an object lacks)."""
    return sum(v for k, v in ops.items() if not k.startswith(("leased ", "known ")))


def status_rewritten(site: common.Site) -> None:
    """Wait for the mount's status file (lease counters) to be rewritten (every two
    seconds): what it says then includes the phase that just ended."""
    from bftfs.fuse.control import status_file

    path = status_file(site.config, site.path)
    since = path.stat().st_mtime
    deadline = time.monotonic() + 10
    while path.stat().st_mtime <= since and time.monotonic() < deadline:
        time.sleep(0.1)


def one_size(site: common.Site, n: int, spy: str | None, out: Path) -> dict[str, Any]:
    """Create ``n`` files in a new directory of ``site``, remove the directory: costs."""
    pids, d = site.pids, site.path / "d"
    d.mkdir()
    cpu0 = {k: cpu_s(p) for k, p in pids.items()}
    c0 = counters(site)
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", f'for i in $(seq {n}); do echo x > "{d}/f$i"; done'], check=True)
    create_s = time.perf_counter() - t0
    cpu1 = {k: cpu_s(p) for k, p in pids.items()}
    status_rewritten(site)  # (the creates' last lease counters counted with them)
    c1 = counters(site)
    spies = []
    if spy:
        for who in ("mount", "node0"):
            path = out / f"rmrf-spy-{who}-{n}.txt"
            cmd = [spy, "record", "-p", str(pids[who]), "-o", str(path), "-f", "raw"]
            quiet = subprocess.DEVNULL
            spies.append(subprocess.Popen(cmd, stdout=quiet, stderr=quiet))
    t1 = time.perf_counter()
    subprocess.run(["rm", "-rf", str(d)], check=True)
    rm_s = time.perf_counter() - t1
    for p in spies:
        p.send_signal(signal.SIGINT)
        p.wait()
    cpu2 = {k: cpu_s(p) for k, p in pids.items()}
    status_rewritten(site)
    c2 = counters(site)
    return {
        "n": n,
        "create_s": round(create_s, 2),
        "rm_s": round(rm_s, 2),
        "cpu_create": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0},
        "cpu_rm": {k: round(cpu2[k] - cpu1[k], 2) for k in cpu0},
        "qu_create": delta(c0[0], c1[0]),
        "qu_rm": delta(c1[0], c2[0]),
        "rm_ops_per_file": round(to_nodes(delta(c1[0], c2[0])) / n, 3),
        "create_ops_per_file": round(to_nodes(delta(c0[0], c1[0])) / n, 3),
        "leases_create": delta(c0[1], c1[1]),
        "leases_rm": delta(c1[1], c2[1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,2000,3000", help="files per directory, by comma")
    ap.add_argument("--spy", action="store_true", help="py-spy the mount and node 0 during rm")
    ap.add_argument("--spy-bin", default=str(Path(sys.executable).with_name("py-spy")))
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    spec = common.bftfs_spec(1, 1)
    work = Path(tempfile.mkdtemp(prefix="bftfs-rmrf-"))
    for n in (int(x) for x in args.sizes.split(",")):
        with common.open_target(spec, work, f"n{n}") as site:
            got = one_size(site, n, args.spy_bin if args.spy else None, args.out)
            print(json.dumps(got), flush=True)


if __name__ == "__main__":
    main()
