"""The re-read of a verified file after a remount (issue 63): local disk, bftfs with
``passthrough`` (the kernel reads the mount's verified copy), bftfs without (the daemon
serves every read).

    .venv/bin/python -m benchmarks.passthrough [--mib 200] [--rounds 3]

A file of ``--mib`` MiB is written with ``dd bs=1M conv=fsync`` into a local directory and
into a mount of a fresh local cluster of node processes; then per round and in turn it is
read with ``dd bs=1M`` after a remount, with the page cache dropped first (``drop_caches``:
root; "cold") and again (the same read repeated, "warm"): from the local disk; through a
``passthrough`` mount without a copy (the daemon serves it and the copy is made: "first");
through a ``passthrough`` mount with the copy; through a mount without passthrough.
Prints MB/s per case (median of rounds, then each round's).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bftfs.fuse import control
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster


def _drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _read_mb_s(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return path.stat().st_size / (time.perf_counter() - start) / 1e6


def _write(path: Path, mib: int) -> None:
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"],
        check=True,
        capture_output=True,
    )


def _wait_for_copy(copies: Path) -> None:
    """Until the copy the first read made is kept (at the release after the close)."""
    deadline = time.monotonic() + 60
    while not any(".part" not in p.name for p in copies.iterdir()):
        assert time.monotonic() < deadline, "no copy kept"
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bftfs-pt-") as tmp:
        base = Path(tmp)
        local = base / "local.bin"
        _write(local, args.mib)
        with ProcessCluster(base / "c", map_size=4 << 30, durable=False) as pc:
            mp = base / "m"
            with Mount(pc.config, mp, options="allow_other") as m:
                _write(m.mountpoint / "f.bin", args.mib)
                copies = control.status_file(pc.config, m.mountpoint).with_suffix(".passthrough")
            cases = {
                "local": None,
                "bftfs passthrough first": "passthrough",  # reads through the daemon, copies
                "bftfs passthrough": "passthrough",
                "bftfs": "nopassthrough",
            }
            for _ in range(args.rounds):
                for name, option in cases.items():
                    if option is None:
                        _drop_caches()
                        results.setdefault(f"{name} cold", []).append(_read_mb_s(local))
                        results.setdefault(f"{name} warm", []).append(_read_mb_s(local))
                        continue
                    if name.endswith("first"):
                        for p in copies.glob("*") if copies.exists() else ():
                            p.unlink()
                    with Mount(pc.config, mp, options=f"allow_other,{option}") as m:
                        _drop_caches()
                        f = m.mountpoint / "f.bin"
                        results.setdefault(f"{name} cold", []).append(_read_mb_s(f))
                        if name.endswith("first"):
                            _wait_for_copy(copies)
                            continue
                        results.setdefault(f"{name} warm", []).append(_read_mb_s(f))
    for name, figures in results.items():
        each = ", ".join(f"{x:.0f}" for x in figures)
        print(f"{name:<30} {statistics.median(figures):8.0f} MB/s  ({each})")


if __name__ == "__main__":
    main()
