"""The standard-tool workloads (issue 64: benchmarks/fio.py, fsmark.py, dbench.py and their
harness toolbench.py; tools.py, all of them as cases of one run): each tool's parser on
output the real tool printed on this machine (trimmed, never made up), the command lines
and arguments, the ratio table, a missing tool's skip, the merged run's cases and their
rows on the bench-all page, and one slow smoke run per tool on the local disk and bftfs."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import dbench  # noqa: E402
import fio  # noqa: E402
import fsmark  # noqa: E402
import toolbench  # noqa: E402
import tools  # noqa: E402
from toolbench import Case, ToolError  # noqa: E402

from bftfs.testing.mounts import fuse_available  # noqa: E402

# Captured output ---------------------------------------------------------------------------

#: fio 3.33, randwrite 4 KiB with fsync=1, 2 jobs, --group_reporting (one job in the
#: report), run on the local disk; trimmed to the fields the parser reads.
FIO_RANDWRITE_GROUPED = """\
{
 "fio version": "fio-3.33",
 "jobs": [
  {
   "jobname": "data",
   "groupid": 0,
   "error": 0,
   "job options": {
    "name": "data",
    "rw": "randwrite",
    "bs": "4k",
    "size": "4M",
    "numjobs": "2",
    "fsync": "1",
    "runtime": "3",
    "ioengine": "psync"
   },
   "read": {
    "io_bytes": 0,
    "io_kbytes": 0,
    "bw_bytes": 0,
    "bw": 0,
    "iops": 0.0,
    "runtime": 0,
    "total_ios": 0
   },
   "write": {
    "io_bytes": 8388608,
    "io_kbytes": 8192,
    "bw_bytes": 29127111,
    "bw": 28444,
    "iops": 7111.111111,
    "runtime": 288,
    "total_ios": 2048
   }
  }
 ]
}
"""

#: fio 3.33, sequential read 1 MiB, 2 jobs without --group_reporting (a job each).
FIO_READ_TWO_JOBS = """\
{
 "fio version": "fio-3.33",
 "jobs": [
  {
   "jobname": "data",
   "groupid": 0,
   "error": 0,
   "job options": {
    "name": "data",
    "rw": "read",
    "bs": "1M",
    "size": "8M",
    "numjobs": "2",
    "ioengine": "psync",
    "runtime": "3"
   },
   "read": {
    "io_bytes": 8388608,
    "io_kbytes": 8192,
    "bw_bytes": 699050666,
    "bw": 682666,
    "iops": 666.666667,
    "runtime": 12,
    "total_ios": 8
   },
   "write": {
    "io_bytes": 0,
    "io_kbytes": 0,
    "bw_bytes": 0,
    "bw": 0,
    "iops": 0.0,
    "runtime": 0,
    "total_ios": 0
   }
  },
  {
   "jobname": "data",
   "groupid": 0,
   "error": 0,
   "job options": {
    "name": "data",
    "rw": "read",
    "bs": "1M",
    "size": "8M",
    "numjobs": "2",
    "ioengine": "psync",
    "runtime": "3"
   },
   "read": {
    "io_bytes": 8388608,
    "io_kbytes": 8192,
    "bw_bytes": 699050666,
    "bw": 682666,
    "iops": 666.666667,
    "runtime": 12,
    "total_ios": 8
   },
   "write": {
    "io_bytes": 0,
    "io_kbytes": 0,
    "bw_bytes": 0,
    "bw": 0,
    "iops": 0.0,
    "runtime": 0,
    "total_ios": 0
   }
  }
 ]
}
"""

#: fs_mark 3.3 -n 200 -s 4096 -t 2 -L 1 -S 1 on the local disk (its output, less one note).
FSMARK_OUTPUT = """\

#  fs_mark  -d  /var/tmp/tools-cap/fsm  -n  200  -s  4096  -t  2  -L  1  -S  1
#\tVersion 3.3, 2 thread(s) starting at Sun Nov 29 13:19:25 2026
#\tSync method: INBAND FSYNC: fsync() per file in write loop.
#\tDirectories:  no subdirectories used
#\tFile names: 40 bytes long, (16 initial bytes of time stamp with 24 random bytes at end of name)
#\tFiles info: size 4096 bytes, written with an IO size of 16384 bytes per write

FSUse%        Count         Size    Files/sec     App Overhead
    71          400         4096        711.0             6478
"""

#: dbench 4.00, 2 clients, 5 s on the local disk (its whole output).
DBENCH_OUTPUT = """\
dbench version 4.00 - Copyright Andrew Tridgell 1999-2004

Running for 5 seconds with load '/usr/share/dbench/client.txt' and minimum warmup 1 secs
failed to create barrier semaphore
2 of 2 processes prepared for launch   0 sec
releasing clients
   2     18361   108.57 MB/sec  execute   1 sec  latency 48.237 ms
   2     29155   111.00 MB/sec  execute   2 sec  latency 41.625 ms
   2     41802   119.63 MB/sec  execute   3 sec  latency 61.163 ms
   2     50146   112.01 MB/sec  execute   4 sec  latency 49.601 ms
   2  cleanup   5 sec
   0  cleanup   5 sec

 Operation      Count    AvgLat    MaxLat
 ----------------------------------------
 NTCreateX      18510     0.100    49.594
 Close          13620     0.005    12.252
 Rename           785     0.040     3.086
 Unlink          3708     0.439    34.431
 Qpathinfo      16804     0.023    40.571
 Qfileinfo       2941     0.006    13.922
 Qfsinfo         3067     0.002     0.441
 Sfileinfo       1505     0.018     7.179
 Find            6482     0.046    21.951
 WriteX          9166     0.030    14.726
 ReadX          29144     0.008    25.149
 LockX             62     0.004     0.146
 UnlockX           62     0.001     0.002
 Flush           1281     3.701    61.160

Throughput 112.007 MB/sec  2 clients  2 procs  max_latency=61.163 ms
"""

# Parsers -----------------------------------------------------------------------------------


def test_fio_report_gives_rates_and_operations_per_direction() -> None:
    got = fio.parse_fio(FIO_RANDWRITE_GROUPED)
    assert got["write_iops"] == pytest.approx(7111.111111)
    assert (got["write_ios"], got["write_bytes"], got["write_bytes_s"]) == (2048, 8 << 20, 29127111)
    assert got["read_ios"] == got["read_bytes"] == 0


def test_fio_jobs_reported_one_by_one_are_summed() -> None:
    got = fio.parse_fio(FIO_READ_TWO_JOBS)
    assert (got["read_bytes"], got["read_ios"]) == (16 << 20, 16)
    assert got["read_bytes_s"] == 2 * 699050666
    assert got["read_iops"] == pytest.approx(2 * 666.666667)


def test_fio_warnings_before_the_report_are_skipped_and_failures_refused() -> None:
    assert fio.parse_fio("fio: note\n" + FIO_RANDWRITE_GROUPED)["write_ios"] == 2048
    with pytest.raises(ToolError, match="no JSON"):
        fio.parse_fio("fio: failed to open file\n")
    with pytest.raises(ToolError, match="no JSON"):
        fio.parse_fio(FIO_RANDWRITE_GROUPED[:200])
    failed = json.loads(FIO_RANDWRITE_GROUPED)
    failed["jobs"][0]["error"] = 5
    with pytest.raises(ToolError, match="error 5"):
        fio.parse_fio(json.dumps(failed))
    with pytest.raises(ToolError, match="no jobs"):
        fio.parse_fio(json.dumps({"fio version": "fio-3.33", "jobs": []}))


def test_fsmark_result_row_is_read_after_its_header() -> None:
    got = fsmark.parse_fsmark(FSMARK_OUTPUT)
    assert got == {
        "fs_use_pct": 71.0,
        "count": 400.0,
        "size": 4096.0,
        "files_per_s": 711.0,
        "app_overhead_us": 6478.0,
    }
    cut = FSMARK_OUTPUT[: FSMARK_OUTPUT.index("    71 ")]
    with pytest.raises(ToolError, match="no result row"):
        fsmark.parse_fsmark(cut)


def test_dbench_throughput_line_and_operation_table() -> None:
    got = dbench.parse_dbench(DBENCH_OUTPUT)
    assert (got["mb_per_s"], got["clients"], got["procs"]) == (112.007, 2, 2)
    assert got["max_latency_ms"] == 61.163
    assert got["operations"]["NTCreateX"] == 18510 and got["operations"]["Flush"] == 1281
    assert len(got["operations"]) == 14 and got["operations_total"] == 107137
    with pytest.raises(ToolError, match="no Throughput"):
        dbench.parse_dbench(DBENCH_OUTPUT[: DBENCH_OUTPUT.index("Throughput")])


# Arguments and command lines ---------------------------------------------------------------


def test_short_and_full_defaults_of_each_tool() -> None:
    a = fio.parse_args([])
    assert (a.jobs, a.size, a.seconds, a.bs, a.runs, a.mode) == ([1, 4], 32, 10, [1], 1, "short")
    assert a.targets == ["local", "bindfs", "glusterfs", "bftfs"]
    a = fio.parse_args(["--full"])
    assert (a.size, a.seconds, a.bs, a.runs, a.cap) == (256, 30, [1, 2], 3, 1800.0)
    a = fsmark.parse_args(["--threads", "1,2,8", "--targets", "local,bftfs"])
    assert (a.threads, a.files, a.file_size, a.targets) == (
        [1, 2, 8],
        300,
        4096,
        ["local", "bftfs"],
    )
    assert fsmark.parse_args(["--full"]).files == 3000
    a = dbench.parse_args(["--bs", "0,2"])
    assert (a.clients, a.seconds, a.bs) == ([1, 4], 20, [0, 2])
    assert dbench.parse_args(["--full"]).seconds == 60


@pytest.mark.parametrize(
    "argv",
    [
        ["--targets", "local,nfs"],
        ["--targets", ""],
        ["--bs", "one"],
        ["--bs", "-1"],
        ["--load", "disk"],
    ],
)
@pytest.mark.parametrize("parse", [fio.parse_args, fsmark.parse_args, dbench.parse_args])
def test_bad_shared_arguments_are_refused(parse: Any, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)


def test_bad_tool_arguments_are_refused() -> None:
    for parse, argv in (
        (fio.parse_args, ["--jobs", "0"]),
        (fio.parse_args, ["--size", "-1"]),
        (fsmark.parse_args, ["--threads", "a"]),
        (fsmark.parse_args, ["--file-size", "-1"]),
        (dbench.parse_args, ["--clients", ""]),
        (dbench.parse_args, ["--seconds", "-5"]),
    ):
        with pytest.raises(SystemExit):
            parse(argv)


def test_fio_cases_and_their_command_lines() -> None:
    args = fio.parse_args(["--jobs", "1,4", "--size", "8", "--seconds", "3"])
    cases = fio.cases_for(args.jobs)
    assert [c.key for c in cases[:4]] == [
        "seqwrite-j1",
        "seqread-j1",
        "randread-j1",
        "randwrite-fsync-j1",
    ]
    assert len(cases) == 8 and cases[4].label == "sequential write 1 MiB, 4 jobs"
    assert [(c.unit, c.cost_unit) for c in cases[1:3]] == [("MiB/s", "MiB"), ("IOPS", "op")]
    by = {c.key: c for c in cases}
    w = fio.fio_command(by["seqwrite-j4"], Path("/d"), args)
    assert {"--rw=write", "--bs=1M", "--numjobs=4", "--end_fsync=1", "--size=8M"} <= set(w)
    assert "--time_based" not in w and "--fsync=1" not in w
    r = fio.fio_command(by["randwrite-fsync-j1"], Path("/d"), args)
    assert {"--rw=randwrite", "--bs=4k", "--fsync=1", "--time_based", "--runtime=3"} <= set(r)
    assert "--output-format=json" in r and "--directory=/d" in r


def test_fsmark_and_dbench_command_lines() -> None:
    args = fsmark.parse_args(["--files", "50"])
    assert fsmark.fsmark_command(4, args) == [
        "fs_mark",
        "-d",
        ".",
        "-n",
        "50",
        "-s",
        "4096",
        "-t",
        "4",
        "-L",
        "1",
        "-S",
        "1",
    ]
    assert [c.key for c in fsmark.cases_for([1, 4])] == ["threads-1", "threads-4"]
    args = dbench.parse_args(["--seconds", "7"])
    assert dbench.dbench_command(3, Path("/d"), args) == ["dbench", "-D", "/d", "-t", "7", "3"]
    assert [c.label for c in dbench.cases_for([1, 4])] == [
        "client mix, 1 client",
        "client mix, 4 clients",
    ]


# The table ---------------------------------------------------------------------------------


def _cell(median: float | None) -> dict[str, Any]:
    return {"median": median, "min_max": None, "runs": 1, "errors": [], "costs": {}}


def test_the_table_shows_each_target_beside_its_ratio_to_the_local_disk() -> None:
    cases = [Case("a", "case a", "MiB/s", "MiB"), Case("b", "case b", "IOPS", "op")]
    summary = {
        "a": {"local": _cell(200.0), "bftfs b=1": _cell(50.0)},
        "b": {"local": _cell(4000.0), "bftfs b=1": _cell(None)},
    }
    lines = toolbench.ratio_table(summary, cases, ["local", "bftfs b=1"])
    assert lines[0] == "| workload | unit | local | bftfs b=1 |"
    assert lines[2] == "| case a | MiB/s | 200 | 50 (0.25x) |"
    assert lines[3] == "| case b | IOPS | 4000 | - |"
    assert toolbench.reference(["glusterfs", "bftfs b=1"]) == "glusterfs"
    assert toolbench.fmt_figure(7111.11) == "7111" and toolbench.fmt_figure(1.234) == "1.23"
    assert toolbench.fmt_ratio(8.22 / 6883) == "0.0012x" and toolbench.fmt_ratio(0.53) == "0.53x"
    assert toolbench.fmt_ratio(None) == "-"


def test_a_missing_tool_is_a_skip_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no fio, fs_mark nor dbench on it
    for mod, tool in ((fio, "fio"), (fsmark, "fs_mark"), (dbench, "dbench")):
        assert mod.main(["--targets", "local", "--out", str(tmp_path / "out")]) == 0
        assert f"{tool} skipped: not installed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# One run for every tool (tools.py) ----------------------------------------------------------


def test_the_merged_run_hands_each_case_to_its_tool_with_that_tools_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = tools.parse_args(
        ["--fio-seconds", "3", "--dbench-seconds", "7", "--fsmark-files", "40", "--idle", "0"]
    )
    assert args.tools == ["kerneltree", "fsmark", "dbench", "fio"]  # the order they run in
    cases = [c for t in args.tools for c in tools.tool_cases(t, args)]
    keys = [c.key for c in cases]
    assert keys[0] == "kerneltree/untar" and keys[-1] == "fio/randwrite-fsync-j4"
    assert len(keys) == len(set(keys)) == 6 + 2 + 2 + 8
    seen: list[tuple[str, str, Any]] = []
    for tool in tools.TOOLS:
        monkeypatch.setitem(
            tools.RUNNERS,
            tool,
            lambda c, w, a, tool=tool: seen.append((tool, c.key, a)) or {"value": 1, "units": 1},
        )
    run = tools.runner(tools.tool_args(args))
    for key in ("dbench/clients-4", "fio/randread-j1", "fsmark/threads-1"):
        run(next(c for c in cases if c.key == key), tmp_path, args)
    (t1, k1, a1), (t2, k2, a2), (t3, k3, a3) = seen
    assert (t1, k1, a1.seconds, a1.clients) == ("dbench", "clients-4", 7, [1, 4])
    assert (t2, k2, a2.seconds, a2.size, a2.jobs) == ("fio", "randread-j1", 3, 32, [1, 4])
    assert (t3, k3, a3.files, a3.threads) == ("fsmark", "threads-1", 40, [1, 4])
    # The tool's own command line from those options: the prefix is gone.
    cmd = fio.fio_command(replace(cases[-1], key="randwrite-fsync-j4"), tmp_path, a2)
    assert "--runtime=3" in cmd and "--numjobs=4" in cmd and "--fsync=1" in cmd


def test_the_merged_run_refuses_an_unknown_tool_and_leaves_out_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        tools.parse_args(["--tools", "fio,bonnie"])
    args = tools.parse_args(["--tools", "fio,kerneltree", "--tarball", str(tmp_path / "no.xz")])
    assert args.tools == ["kerneltree", "fio"]
    assert "no.xz is missing" in (tools.missing("kerneltree", args) or "")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tools.missing("fsmark", args) == "fs_mark not installed (make bench-setup)"
    assert tools.main(["--targets", "local", "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out").exists()


def test_the_merged_runs_rows_name_their_tool_on_the_bench_all_page() -> None:
    import benchall

    data = {
        "benchmark": "tools",
        "tool": "fs_mark, fio",
        "config": {
            "cases": [
                {"key": "fsmark/threads-1", "label": "files + fsync, 1 thread", "unit": "files/s"},
                {"key": "kerneltree/untar", "label": "untar (tar -xf)", "unit": "s"},
            ],
            "case_tools": {"fsmark/threads-1": "fs_mark", "kerneltree/untar": "kernel tree"},
        },
        "summary": {
            "fsmark/threads-1": {"local": {"median": 400.0}, "bftfs b=1": {"median": 100.0}},
            "kerneltree/untar": {"local": {"median": 1.0}, "bftfs b=1": {"median": 4.0}},
        },
    }
    fs, untar = benchall.figures_of(data)
    assert (fs.workload, fs.unit, fs.speed_ratio("bftfs b=1")) == (
        "fs_mark: files + fsync, 1 thread",
        "files/s",
        0.25,
    )
    assert untar.workload == "kernel tree: untar (tar -xf)" and not untar.higher_is_better
    assert untar.speed_ratio("bftfs b=1") == 0.25  # a time: local's over the target's


@pytest.mark.skipif(
    not (shutil.which("fio") and shutil.which("fs_mark")), reason="needs fio and fs_mark"
)
def test_the_merged_run_on_the_local_disk_writes_every_tools_rows(tmp_path: Path) -> None:
    rc = tools.main(
        ["--tools", "fsmark,fio", "--targets", "local", "--fio-jobs", "1", "--fio-size", "1"]
        + ["--fio-seconds", "1", "--fsmark-threads", "1", "--fsmark-files", "10"]
        + ["--work", str(tmp_path), "--out", str(tmp_path / "out"), "--no-plot", "--quiet"]
    )
    assert rc == 0
    result = json.loads((tmp_path / "out" / "tools-short.json").read_text())
    assert list(result["summary"]) == [
        "fsmark/threads-1",
        "fio/seqwrite-j1",
        "fio/seqread-j1",
        "fio/randread-j1",
        "fio/randwrite-fsync-j1",
    ]
    assert all(row["local"]["median"] > 0 for row in result["summary"].values())
    assert result["config"]["versions"]["fio"] and result["config"]["left_out"] == {}


def test_back_to_back_cases_wait_for_one_status_rewrite_each_not_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``costs.MountCounters(chain=True)`` (toolbench.measure's meter): the second phase
    starts from the counters the first ended with, without reading the mount again."""
    import costs

    reads: list[float | None] = []
    rounds = iter([10.0, 25.0, 40.0, 70.0])

    def counters(_cfg: Any, _mnt: Path, *, after: float | None, pid: int | None) -> dict:
        reads.append(after)
        return {"rounds": next(rounds)}

    monkeypatch.setattr(costs, "mount_counters", counters)
    chained = costs.MountCounters(object(), [Path("/m")], chain=True)
    for phase in ("a", "b"):
        chained(phase, "start")
        chained(phase, "end")
    assert chained.phases == {"a": {"rounds": 15.0}, "b": {"rounds": 15.0}}
    assert len(reads) == 3 and all(r is not None for r in reads)  # each a fresh rewrite
    rounds = iter([10.0, 25.0, 40.0, 70.0])
    plain = costs.MountCounters(object(), [Path("/m")])
    for phase in ("a", "b"):
        plain(phase, "start")
        plain(phase, "end")
    assert plain.phases == {"a": {"rounds": 15.0}, "b": {"rounds": 30.0}} and len(reads) == 7


# Real runs ---------------------------------------------------------------------------------

SMOKE = {
    "fio": (fio, ["--jobs", "1", "--size", "2", "--seconds", "1"], "fio-short"),
    "fs_mark": (fsmark, ["--threads", "1,2", "--files", "20"], "fsmark-short"),
    "dbench": (dbench, ["--clients", "1", "--seconds", "3"], "dbench-short"),
}


@pytest.mark.slow
@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
@pytest.mark.parametrize("tool", sorted(SMOKE))
def test_each_tool_runs_on_the_local_disk_and_bftfs(tmp_path: Path, tool: str) -> None:
    mod, argv, stem = SMOKE[tool]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (make bench-setup)")
    work = Path(tempfile.mkdtemp(prefix="t1tools-", dir="/var/tmp"))
    try:
        rc = mod.main(
            [*argv, "--targets", "local,bftfs", "--bs", "1", "--work", str(work)]
            + ["--out", str(tmp_path), "--no-plot", "--quiet"]
        )
        assert not list(work.iterdir()), "the scratch directory is left"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert rc == 0
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    assert result["config"]["targets"] == ["local", "bftfs b=1"]
    assert result["config"]["tool_version"]
    for key, row in result["summary"].items():
        for name in ("local", "bftfs b=1"):
            assert row[name]["runs"] == 1 and row[name]["median"] > 0, (key, name)
        assert row["bftfs b=1"]["costs"]["rounds"] > 0  # from the mount's metrics
        assert row["local"]["costs"]["rounds"] is None
    md = (tmp_path / f"{stem}.md").read_text()
    assert "| workload | unit | local | bftfs b=1 |" in md and "x) |" in md
