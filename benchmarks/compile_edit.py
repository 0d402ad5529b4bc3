"""A compile on one mount while another mount edits the headers it includes (issue 62).

Developers keep a tree on a shared file system and build it on one machine while editing on
another. Per target, the Lua 5.4 sources of the Andrew tree (``andrew.LUA54``: its ``.c``
and ``.h`` files) are copied in through mount A, then A builds them ``--rounds`` times
(``andrew.lua54_build``: every file compiled, then linked) twice: once alone (*quiet*) and
once while mount B appends a ``#define`` to a header picked by a seeded generator every
``--interval`` seconds (*edited*). Each build opens every header many times, so each edit
makes B's mount recall what A holds (bftfs leases) or is simply read (GlusterFS).

Close-to-open is checked, not assumed: after the editor stops, A preprocesses a file that
uses the last macro B defined; the compiler must see B's value. A run that sees an old
header is an error, not a figure.

Targets, interleaved per repetition: ``local`` (one directory: A and B are the same),
``glusterfs`` (a replica-3 volume mounted twice, ``two_postmarks.gluster_two``) and
``bftfs`` (a fresh durable cluster, t = b = 1, mounts ``client0`` and ``client1`` with
leases) and ``bftfs-nolease`` (the same with ``lease=0``: what leases that ping-pong must not
fall below). Reported: median build seconds quiet and edited, their ratio (what the edits cost
the builder), edits made, and for bftfs the leases' recalls on both mounts.

    .venv/bin/python benchmarks/compile_edit.py --runs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import andrew  # noqa: E402
import common  # noqa: E402
import contention  # noqa: E402
import gluster  # noqa: E402
import two_postmarks  # noqa: E402
from common import Progress  # noqa: E402

TARGETS = ("local", "glusterfs", "bftfs", "bftfs-nolease")


def copy_sources(tree: Path, dest: Path) -> list[str]:
    """The Lua directory's C sources and headers into ``dest``; the headers' names."""
    dest.mkdir()
    for p in sorted(tree.iterdir()):
        if p.suffix in (".c", ".h"):
            shutil.copyfile(p, dest / p.name)
    return sorted(p.name for p in dest.glob("*.h"))


def build(where: Path, timeout: float) -> float:
    """One full build in ``where``; its seconds."""
    t0 = time.perf_counter()
    andrew.phase_compile(andrew.lua54_build(), where, timeout)
    return time.perf_counter() - t0


class Editor:
    """Appends a new ``#define BFTFS_EDIT_<k> <k>`` to a seeded choice of header, through
    the other mount, every ``interval`` seconds until stopped (each edit a whole open,
    append, close: what an editor's save is, minus the rename)."""

    def __init__(self, src: Path, headers: list[str], interval: float, seed: int) -> None:
        self.src, self.headers, self.interval = src, headers, interval
        self.rng = random.Random(seed)
        self.edits: list[tuple[str, int]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                header, k = self.rng.choice(self.headers), len(self.edits)
                with open(self.src / header, "a") as f:
                    f.write(f"\n#define BFTFS_EDIT_{k} {k}\n")
                self.edits.append((header, k))
                self._stop.wait(self.interval)
        except OSError as e:
            self.error = f"editor: {e}"

    def __enter__(self) -> Editor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def sees_last_edit(src: Path, header: str, k: int) -> bool:
    """Whether the compiler on this mount reads the header as the editor left it: a file
    using ``BFTFS_EDIT_<k>`` preprocesses to ``k`` (close-to-open across mounts)."""
    probe = src / "bftfs_probe.c"
    probe.write_text(f'#include "{header}"\nint bftfs_probe = BFTFS_EDIT_{k};\n')
    try:
        out = subprocess.run(
            ["cc", "-E", "-P", probe.name], cwd=src, capture_output=True, text=True, timeout=60
        )
    finally:
        probe.unlink()
    return out.returncode == 0 and f"int bftfs_probe = {k};" in out.stdout


def session(a: Path, b: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Quiet builds then edited builds in ``a``, the edits through ``b``; the figures.

    Raises:
        RuntimeError: the builder did not see the last edit, or the editor failed.
    """
    tree = andrew.default_tree(Progress("compile-edit")) / andrew.LUA54
    headers = copy_sources(tree, a / "lua")
    src_a, src_b = a / "lua", b / "lua"
    build(src_a, args.timeout)  # the first build writes the objects: not measured
    quiet = [build(src_a, args.timeout) for _ in range(args.rounds)]
    with Editor(src_b, headers, args.interval, seed) as editor:
        edited = [build(src_a, args.timeout) for _ in range(args.rounds)]
    if editor.error or not editor.edits:
        raise RuntimeError(editor.error or "the editor made no edit")
    header, k = editor.edits[-1]
    if not sees_last_edit(src_a, header, k):
        raise RuntimeError(f"the builder's mount does not see edit {k} of {header}")
    return {
        "quiet_s": common.median(quiet),
        "edited_s": common.median(edited),
        "edits": len(editor.edits),
        "seen": True,
    }


@contextlib.contextmanager
def two_mounts(name: str, base: Path) -> Iterator[tuple[Path, Path, Any]]:
    """Mounts A and B of a fresh ``name`` target, and for bftfs the cluster and mounts
    (whose lease counters are read after the run)."""
    if name == "local":
        (base / "d").mkdir()
        yield base / "d", base / "d", None
        return
    if name == "glusterfs":
        with two_postmarks.gluster_two(base) as (a, b, _pids):
            yield a, b, None
        return
    from bftfs.testing.mounts import Mount
    from bftfs.testing.processes import ProcessCluster

    lease = "bftfs-nolease" if name == "bftfs-nolease" else "bftfs-lease"
    options = contention.TARGETS[lease] + ",metrics_port=0"
    with (
        ProcessCluster(base / "c", map_size=1 << 30, durable=True, clients=2) as pc,
        Mount(pc.config, base / "a", client="client0", options=options) as ma,
        Mount(pc.config, base / "b", client="client1", options=options) as mb,
    ):
        yield ma.mountpoint, mb.mountpoint, (pc, ma, mb)


def run_target(name: str, work: Path, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    """One session on a fresh ``name``."""
    base = work / f"{name}-{rep}"
    base.mkdir()
    try:
        with two_mounts(name, base) as (a, b, bft):
            out = session(a, b, args, args.seed + rep)
            if bft is not None:
                pc, ma, mb = bft
                leases = contention._leases(pc, ma) + contention._leases(pc, mb)
                out["recalled"] = leases["recalled"]
            return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per target: medians over its runs without an error, and the errors."""
    out: dict[str, Any] = {}
    for name in names:
        ok = [r for r in runs if r["target"] == name and "error" not in r]
        med: dict[str, Any] = {
            k: common.median([r[k] for r in ok if r.get(k) is not None])
            for k in ("quiet_s", "edited_s", "edits", "recalled")
        }
        med["ratio"] = common.ratio(med["edited_s"], med["quiet_s"])
        med["errors"] = [r["error"] for r in runs if r["target"] == name and "error" in r]
        out[name] = med
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results page."""
    cfg = result["config"]
    lines = [
        f"### A compile while another mount edits its headers ({result['date']})",
        "",
        f"Lua 5.4 built {cfg['rounds']} times quiet, then {cfg['rounds']} times while the other "
        f"mount appends a `#define` to a header every {cfg['interval']} s (seed {cfg['seed']});"
        f" medians over {cfg['runs']} interleaved run(s). The builder's mount must preprocess "
        "the last edit's value (close-to-open), else the run is an error.",
        "",
        "| target | build s, quiet | build s, edited | edited / quiet | edits | bftfs recalls |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["summary"].items():
        rec = "-" if s.get("recalled") is None else f"{s['recalled']:.0f}"
        lines.append(
            f"| {name} | {common.fmt_s(s['quiet_s'])} | {common.fmt_s(s['edited_s'])} | "
            f"{common.fmt_ratio(s['ratio'])} | {s['edits'] or 0:.0f} | {rec} |"
        )
        lines += [f"| {name}: error | {e[:120]} | | | | |" for e in s["errors"]]
    lines += ["", *common.machine_markdown(result)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="interleaved runs per target")
    ap.add_argument("--rounds", type=int, default=2, help="builds quiet and builds edited")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between edits")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per build")
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    ap.add_argument("--work", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--name", default="compile-edit", help="results file stem")
    args = ap.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    for t in args.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm_handler()
    progress = Progress("compile-edit")
    targets = list(args.targets)
    if "glusterfs" in targets and gluster.why_not():
        progress(f"glusterfs skipped: {gluster.why_not()}")
        targets.remove("glusterfs")
    machine, date = common.machine_info(), common.now_utc()
    work = Path(tempfile.mkdtemp(prefix="bftfs-cedit-", dir=args.work))
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.runs):
            for name in targets if rep % 2 == 0 else targets[::-1]:
                progress(f"run {rep + 1}/{args.runs} {name:<10}", end="")
                rec: dict[str, Any] = {"target": name, "rep": rep}
                try:
                    rec.update(run_target(name, work, args, rep))
                except Exception as e:  # recorded; the other targets go on
                    rec["error"] = f"{type(e).__name__}: {e}"
                progress.more(
                    f" -> quiet {rec.get('quiet_s', 0):.2f} s, edited {rec.get('edited_s', 0):.2f}"
                    f" s, {rec.get('edits', 0)} edits {rec.get('error', '')[:200]}",
                    end="\n",
                )
                runs.append(rec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "compile-edit",
        "date": date,
        "machine": machine,
        "commit": common.commit_info(),
        "config": {k: getattr(args, k) for k in ("runs", "rounds", "interval", "seed")},
        "runs": runs,
        "summary": summarise(runs, targets),
    }
    md = common.write_results(
        args.out, args.name, result, markdown, None, progress, with_plot=False
    )
    print(md)
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
