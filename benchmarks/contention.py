"""Two mounts working in one directory, with and without leases (issue 33's contention bar).

Leases must not make a shared directory slower: two mounts that both create there would
otherwise pass the directory's lease back and forth (each create recalling the other's).
The lease policy (``fs/leases.py``: no lease within 5 s of a recall or refusal of it, an
exclusive lease only while nobody else holds one) is what keeps this as fast as without.

Per target, on a fresh cluster of node processes with two mounts (client0, client1), both
mounts at once (one thread each), in one shared directory:

* ``distinct``: each mount creates ``--files`` files of 3000 bytes under its own names,
  then removes them (the pattern of two PostMarks in one directory);
* ``journal``: each mount ``--loops`` times creates, writes and closes one shared name and
  removes it (ENOENT from a removal that lost the race is expected), as two editors or
  two jobs with one journal file do.

Reported: operations per second of both mounts together (median of ``--runs`` interleaved
runs), and what the leases did (recalls, refusals, exclusive leases, deferred closes) from
the mounts' status files.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import engines  # benchmarks/engines.py: the threads of mounts working at once

from bftfs.fuse import control
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

#: ``bftfs-recall``: leases, but a look at the other mount's exclusive lease recalls it
#: (``nopublish``, the default before 12-04) rather than asking for a publication.
TARGETS = {
    "bftfs-nolease": "allow_other,lease=0",
    "bftfs-lease": "allow_other,lease=30",
    "bftfs-recall": "allow_other,lease=30,nopublish",
}
DATA = b"x" * 3000


def _distinct(d: Path, me: str, files: int) -> int:
    for i in range(files):
        (d / f"{me}-{i}").write_bytes(DATA)
    for i in range(files):
        os.unlink(d / f"{me}-{i}")
    return 2 * files


def _journal(d: Path, me: str, loops: int) -> int:
    for _ in range(loops):
        with open(d / "journal", "wb") as f:
            f.write(DATA)
        try:
            os.unlink(d / "journal")
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    return 2 * loops


def _both(dirs: list[Path], work: Callable[[Path, str], int]) -> float:
    """Operations per second of both mounts running ``work`` at once."""
    ops, took = engines.run_threads(dirs, work)
    return ops / took


def _leases(pc: ProcessCluster, m: Mount) -> Counter[str]:
    time.sleep(2.2)  # the status file is rewritten every two seconds
    got = json.loads(control.status_file(pc.config, m.mountpoint).read_text()).get("leases")
    return Counter({k: v for k, v in (got or {}).items() if isinstance(v, int)})


def run_target(options: str, work: Path, files: int, loops: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        home = Path(tmp)
        with (
            ProcessCluster(home / "c", map_size=1 << 30, durable=True, clients=2) as pc,
            Mount(pc.config, home / "a", client="client0", options=options) as a,
            Mount(pc.config, home / "b", client="client1", options=options) as b,
        ):
            (a.mountpoint / "shared").mkdir()
            dirs = [a.mountpoint / "shared", b.mountpoint / "shared"]
            try:
                out: dict[str, object] = {
                    "distinct": _both(dirs, lambda d, me: _distinct(d, me, files)),
                    "journal": _both(dirs, lambda d, me: _journal(d, me, loops)),
                }
            except OSError:
                kept = work / f"contention-failed-{os.getpid()}"
                kept.mkdir(exist_ok=True)
                for log in (home / "c").glob("mount-*.log"):
                    (kept / log.name).write_bytes(log.read_bytes())
                print(f"failed: the mounts' logs are in {kept}", flush=True)
                raise
            leases = _leases(pc, a) + _leases(pc, b)
            out["leases"] = {
                k: leases[k] for k in ("recalled", "refused", "exclusive", "deferred", "taken")
            }
            return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100, help="files per mount (distinct)")
    ap.add_argument("--loops", type=int, default=100, help="journal loops per mount")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per target")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args(argv)
    results: dict[str, list[dict[str, object]]] = {t: [] for t in TARGETS}
    for run in range(args.runs):
        for name, options in TARGETS.items():
            got = run_target(options, args.work, args.files, args.loops)
            results[name].append(got)
            print(f"run {run + 1}/{args.runs} {name}: {got}", flush=True)
    print("\n| target | distinct names, ops/s | one journal name, ops/s | leases (all runs) |")
    print("|---|---:|---:|---|")
    for name, runs in results.items():
        med = {
            k: statistics.median(float(r[k]) for r in runs)  # type: ignore[arg-type]
            for k in ("distinct", "journal")
        }
        total: Counter[str] = Counter()
        for r in runs:
            total.update(r["leases"])  # type: ignore[arg-type]
        shown = ", ".join(f"{k} {v}" for k, v in total.items() if v) or "-"
        print(f"| {name} | {med['distinct']:.1f} | {med['journal']:.1f} | {shown} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
