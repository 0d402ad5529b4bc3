"""Issue 62's benchmark pieces: the aged and loaded target variants (benchmarks/variants.py),
the costs per unit printed beside every rate (benchmarks/costs.py: CPU from /proc stat
lines, a mount's counters from its metrics), the ageing workload and loop
(benchmarks/ageing.py) and its chart; argument parsing of every benchmark that gained the
flags; and one short run on real targets (local and a bftfs cluster, aged)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import ageing  # noqa: E402
import andrew  # noqa: E402
import chart  # noqa: E402
import common  # noqa: E402
import costs  # noqa: E402
import postmark  # noqa: E402
import profiling  # noqa: E402
import seqio  # noqa: E402
import two_postmarks  # noqa: E402
import variants  # noqa: E402

from bftfs.testing.mounts import fuse_available  # noqa: E402

# Argument parsing -------------------------------------------------------------------------


@pytest.mark.parametrize("parse", [andrew.parse_args, postmark.parse_args, seqio.parse_args])
def test_every_side_by_side_benchmark_takes_the_variant_flags(parse: Any) -> None:
    plain = parse([])
    assert (plain.aged, plain.load) == (False, None)
    assert (plain.age_andrew_rounds, plain.age_big_mib, plain.age_small_files) == (3, 1024, 3000)
    args = parse(["--aged", "--load", "nice-node", "--age-big-mib", "16"])
    assert (args.aged, args.load, args.age_big_mib) == (True, "nice-node", 16)
    assert ageing.config_from(args) == ageing.Ageing(3, 16, 3000)
    with pytest.raises(SystemExit):
        parse(["--load", "disk"])


def test_two_postmarks_takes_the_variant_flags() -> None:
    args = two_postmarks.parse_args(["--aged", "--load", "cpu", "--targets", "local,bftfs-lease"])
    assert (args.aged, args.load, args.targets) == (True, "cpu", ["local", "bftfs-lease"])


def test_two_postmarks_counts_a_wait_for_the_other_as_time_not_as_a_fast_run() -> None:
    # Process 1 runs its 1 000 transactions in 5 s while process 2 waits in its create
    # phase, then runs its own in 6 s: the sum of their rates (200 + 167) would claim they
    # ran at once; together they did 2 000 transactions in 11 s.
    first = {"create_s": 0.5, "tx_s": 5.0, "tps": 200.0}
    second = {"create_s": 5.5, "tx_s": 6.0, "tps": 1000 / 6}
    assert abs(two_postmarks.together([first, second], [100.0, 100.0]) - 2000 / 11) < 1e-9
    # Side by side, the two spans overlap: 2 000 transactions in 8 s.
    side = {"create_s": 1.0, "tx_s": 7.5, "tps": 1000 / 7.5}
    a = {"create_s": 0.5, "tx_s": 8.0, "tps": 125.0}
    assert abs(two_postmarks.together([a, side], [100.0, 100.0]) - 2000 / 8) < 1e-9


def test_two_postmarks_splits_each_bftfs_run_per_transaction() -> None:
    mount = {
        "qu_operations": 300.0,
        "rounds": 400.0,
        "behind": 40.0,
        "barriers": 10.0,
        "copies": 6.0,
        "inline_repairs": 4.0,
        "history_fetches": 8.0,
        "backoffs": 16.0,
        "backoff_ms": 80.0,
        "leases": {"recalled": 2, "recall_wait_ms": 1000},
    }
    run = {"target": "bftfs-lease", "rep": 0, "split": [mount, mount]}
    got = two_postmarks.split_per_tx(run, 100)  # 200 transactions of both
    assert got is not None
    assert (got["rounds"], got["behind"], got["barriers + copies + inline"]) == (4.0, 0.4, 0.2)
    assert (got["recalls"], got["recall wait ms"]) == (0.02, 10.0)
    assert two_postmarks.split_per_tx({"target": "glusterfs"}, 100) is None
    capped = {**run, "procs": [{}, {"partial": "6/10 of the transactions before the cap"}]}
    assert two_postmarks.transactions_done(capped, 100) == 160
    got = two_postmarks.split_per_tx(capped, 100)
    assert got is not None and got["rounds"] == 5.0
    table = two_postmarks.split_markdown([run, {"target": "glusterfs"}], 100)
    assert [ln for ln in table if ln.startswith("| bftfs-lease r0 | 3.00 | 4.00 | 0.40 |")]


def test_ageing_arguments_and_refusals() -> None:
    args = ageing.parse_args([])
    assert (args.minutes, args.files, args.transactions) == (60.0, 1000, 4000)
    assert (args.andrew_rounds, args.big_mib, args.small_files) == (3, 1024, 3000)
    with pytest.raises(SystemExit):
        ageing.parse_args(["--minutes", "-1"])
    with pytest.raises(SystemExit):
        ageing.parse_args(["--transactions", "0"])


# CPU from /proc and the mount's counters ----------------------------------------------------


def test_cpu_seconds_are_read_from_a_stat_line_whatever_the_command_name() -> None:
    # A command name may hold spaces and parentheses: fields count from its last ')'.
    fields = ["S"] + ["0"] * 10 + ["250", "150"] + ["0"] * 30
    line = "4242 (evil) (name x) " + " ".join(fields)
    assert profiling.stat_cpu_seconds(line, clk_tck=100) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        profiling.stat_cpu_seconds("no parenthesis here", clk_tck=100)
    # This process's own line agrees with what the kernel says through os.times.
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:  # burn a little CPU so the figure is not zero
        pass
    own = profiling.stat_cpu_seconds(Path("/proc/self/stat").read_text())
    t = os.times()
    assert abs(own - (t.user + t.system)) < 0.1
    assert own >= 0.3


def test_exposition_samples_are_parsed_by_name_and_labels() -> None:
    text = "\n".join(
        [
            "# HELP bftfs_mount_qu_rounds_total Q/U client: rounds",
            "# TYPE bftfs_mount_qu_rounds_total counter",
            "bftfs_mount_qu_rounds_total 22.0",
            'bftfs_mount_qu_operations_total{method="fs.lease"} 2.0',
            "bftfs_mount_qu_operations_total 30.0",
            "garbage",
            "",
        ]
    )
    got = costs.parse_exposition(text)
    assert got == {
        "bftfs_mount_qu_rounds_total": 22.0,
        'bftfs_mount_qu_operations_total{method="fs.lease"}': 2.0,
        "bftfs_mount_qu_operations_total": 30.0,
    }


def test_costs_per_unit_add_every_daemon_and_leave_out_what_was_not_measured() -> None:
    cpu = {"wall": 10.0, "workload": 1.0, "mount": 2.0, "mount2": 1.0, "nodes": 6.0}
    got = costs.per_unit(cpu, {"renewals": 30.0, "rounds": 600.0}, 300)
    assert got == {
        "mount_cpu": pytest.approx(0.01),
        "nodes_cpu": pytest.approx(0.02),
        "renewals": pytest.approx(0.1),
        "rounds": pytest.approx(2.0),
        "units": 300,
    }
    local = costs.per_unit({"wall": 1.0, "workload": 0.5}, {}, 100)
    assert local["mount_cpu"] is local["nodes_cpu"] is local["rounds"] is None
    assert costs.per_unit({"bindfs": 1.0}, {}, 10)["mount_cpu"] == pytest.approx(0.1)
    med = costs.median_costs([{"rounds": 1.0}, {"rounds": 3.0}, {"rounds": None}])
    assert med["rounds"] == 2.0 and med["mount_cpu"] is None


def test_the_cost_table_shows_each_target_and_its_twin_ratio() -> None:
    rows = [
        ("glusterfs", "100", {"mount_cpu": 0.002, "nodes_cpu": 0.004}),
        ("bftfs b=1", "60", {"mount_cpu": 0.01, "nodes_cpu": 0.03, "renewals": 1.5, "rounds": 4}),
        ("bftfs b=1 aged", "30", {"mount_cpu": 0.02, "nodes_cpu": 0.06, "rounds": 8}),
    ]
    lines = costs.cost_table(rows, "tx/s", "tx", {"bftfs b=1 aged": ("aged / fresh", 0.5)})
    assert "| target | tx/s | CPU ms/tx: mount | servers | renewals/tx |" in lines[3]
    assert lines[5] == "| glusterfs | 100 | 2 | 4 | - | - | - |"
    assert lines[6] == "| bftfs b=1 | 60 | 10 | 30 | 1.5 | 4 | - |"
    assert lines[7] == "| bftfs b=1 aged | 30 | 20 | 60 | - | 8 | aged / fresh 0.50x |"
    assert "of the read" in costs.cost_table(rows, "read MB/s", "MiB", phase="read")[1]


# Variants ---------------------------------------------------------------------------------


def _specs() -> list[common.TargetSpec]:
    return [
        common.local_spec(),
        common.glusterfs_spec(),
        common.bftfs_spec(1, 1),
        common.bftfs_spec(1, 1, down=(0,)),
    ]


def test_variants_follow_their_twins_and_only_where_they_mean_something() -> None:
    assert [s.name for s in variants.expand(_specs(), False, None)] == [
        "local",
        "glusterfs",
        "bftfs b=1",
        "bftfs b=1 (1 down)",
    ]
    aged = variants.expand(_specs(), True, "nice-node")
    assert [s.name for s in aged] == [
        "local",  # no server to renice
        "glusterfs",
        "glusterfs +nice-node",
        "bftfs b=1",
        "bftfs b=1 aged",
        "bftfs b=1 +nice-node",
        "bftfs b=1 aged +nice-node",
        "bftfs b=1 (1 down)",  # a degraded cluster is not aged
        "bftfs b=1 (1 down) +nice-node",
    ]
    loaded = [s.name for s in variants.expand(_specs()[:1], False, "cpu")]
    assert loaded == ["local", "local +cpu"]
    pairs = variants.twins(aged)
    assert pairs["bftfs b=1 aged"] == ["bftfs b=1", "aged / fresh"]
    assert pairs["bftfs b=1 aged +nice-node"] == ["bftfs b=1 aged", "loaded / quiet"]
    assert "bftfs b=1" not in pairs
    got = variants.ratios(pairs, {"bftfs b=1": 60.0, "bftfs b=1 aged": 30.0})
    assert got["bftfs b=1 aged"] == ("aged / fresh", 0.5)
    assert got["glusterfs +nice-node"] == ("loaded / quiet", None)


def test_the_reniced_server_is_the_lowest_numbered_node() -> None:
    pids = {"mount": 1, "node10": 5, "node2": 4, "node-shd": 3}
    assert variants.first_server(pids) == ("node2", 4)
    assert variants.first_server({"mount": 1}) is None


def test_renice_lowers_every_thread_of_a_real_process() -> None:
    # A child with a second thread: Linux keeps a nice value per thread.
    code = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
    code += "print('up', flush=True); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "up"
            assert variants.renice(child.pid) == 2
            tids = os.listdir(f"/proc/{child.pid}/task")
            assert [os.getpriority(os.PRIO_PROCESS, int(t)) for t in tids] == [19, 19]
        finally:
            child.kill()


def test_the_cpu_hog_runs_one_busy_process_per_core_and_reaps_them() -> None:
    with variants.CpuHog(2) as hog:
        pids = [p.pid for p in hog.procs]
        assert len(pids) == 2
        start = [profiling.cpu_seconds(p) or 0.0 for p in pids]
        deadline = time.monotonic() + 30
        while any(
            (profiling.cpu_seconds(p) or 0.0) - s < 0.2 for p, s in zip(pids, start, strict=True)
        ):
            assert time.monotonic() < deadline, "the hog's processes did not burn CPU"
            time.sleep(0.05)
    assert hog.procs == []
    assert all(not Path(f"/proc/{p}").exists() for p in pids)
    assert variants.CpuHog().n == os.cpu_count()


# The ageing workload and its chart ----------------------------------------------------------


def test_the_small_tree_is_seeded_and_split_into_directories(tmp_path: Path) -> None:
    sizes = ageing.small_sizes(250, 7)
    assert sizes == ageing.small_sizes(250, 7) != ageing.small_sizes(250, 8)
    assert all(0 <= s <= ageing.SMALL_MAX for s in sizes)
    ageing.make_small_tree(tmp_path / "t", sizes, 7)
    dirs = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert dirs == ["d000", "d001", "d002"]
    got = sorted((tmp_path / "t").rglob("f*"))
    assert [p.stat().st_size for p in got] == sizes
    assert len(list((tmp_path / "t" / "d002").iterdir())) == 50


def test_the_ageing_table_and_chart_show_every_sample() -> None:
    samples = [
        {"age_s": 0.0, "ageing_rounds": 0, "tps": 60.0, "mount_cpu": 0.01, "nodes_cpu": 0.03},
        {"age_s": 600.0, "ageing_rounds": 2, "tps": 30.0, "mount_cpu": 0.02, "nodes_cpu": 0.06},
        {"age_s": 660.0, "ageing_rounds": 2, "tps": 45.0, "mount_cpu": 0.02, "nodes_cpu": 0.04},
    ]
    samples[2]["when"] = "settled"  # --settled: again once the nodes were idle
    for s in samples:
        s.update(renewals=None, rounds=2.0, disk_mib=12.0)
    result: dict[str, Any] = {
        "date": "2026-11-29T12:00:00Z",
        "config": {"b": 1, "minutes": 10, "andrew_rounds": 3, "big_mib": 1024}
        | {"small_files": 3000, "files": 1000, "transactions": 4000, "seed": 42},
        "samples": samples,
        "machine": {"cpu": "x", "cores": 2, "kernel": "k", "python": "3"}
        | {"loadavg_start": [1.0], "loadavg_end": [1.0]},
        "commit": {"commit": "abc", "dirty": False},
    }
    md = ageing.markdown(result)
    assert "| 10.0 | 2 | - | 30 | 20 | 60 | - | 2 | 12 |" in md
    assert "| 11.0 | 2 | settled | 45 | 20 | 40 | - | 2 | 12 |" in md
    assert "0.75x transactions/s, 1.50x CPU per transaction" in md
    svg = chart.lines_svg(
        [0.0, 10.0],
        [chart.LinePanel("tx/s", [("bftfs", [60.0, None], "#000")])],
        "age (minutes)",
        "caption",
    )
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 1
    assert len(root.findall(f"{ns}circle")) == 1  # the missing sample is not drawn


# Real targets -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
def test_postmark_runs_fresh_and_aged_bftfs_beside_local_with_costs(tmp_path: Path) -> None:
    if shutil.which("postmark") is None:
        pytest.skip("postmark is not installed (scripts/setup-bench.sh)")
    # PostMark crashes (SIGSEGV) on a long location path: pytest's tmp_path is too long.
    work = Path(tempfile.mkdtemp(prefix="t1age-", dir="/var/tmp"))
    try:
        rc = postmark.main(
            ["--files", "20", "--transactions", "80", "--bs", "1", "--no-fsync-bs", ""]
            + ["--targets", "local,bftfs", "--aged", "--age-andrew-rounds", "0"]
            + ["--age-big-mib", "2", "--age-small-files", "30", "--work", str(work)]
            + ["--out", str(tmp_path), "--no-plot", "--quiet"]
        )
        assert not list(work.iterdir()), "the scratch directory is left"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert rc == 0
    result = json.loads((tmp_path / "postmark-short.json").read_text())
    summary = result["summary"]
    assert list(summary) == ["local", "bftfs b=1", "bftfs b=1 aged"]
    assert result["twins"] == {"bftfs b=1 aged": ["bftfs b=1", "aged / fresh"]}
    aged_run = next(r for r in result["runs"] if r["target"] == "bftfs b=1 aged")
    assert aged_run["info"]["ageing"]["small_s"] > 0
    for name in ("bftfs b=1", "bftfs b=1 aged"):
        c = summary[name]["costs"]
        # Measured, not None; a short run's nodes may spend less than one clock tick (10 ms)
        # of CPU between the two readings, so zero is a measurement (the CI saw 0.0).
        assert c["mount_cpu"] is not None and c["mount_cpu"] >= 0
        assert c["nodes_cpu"] is not None and c["nodes_cpu"] >= 0
        assert c["rounds"] > 0  # from the mount's metrics: metrics_port=0 on every mount
        assert c["renewals"] is not None
    assert summary["local"]["costs"]["rounds"] is None
    md = (tmp_path / "postmark-short.md").read_text()
    assert "| bftfs b=1 aged |" in md and "aged / fresh" in md
