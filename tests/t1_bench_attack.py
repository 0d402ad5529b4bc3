"""Issue 64's attack variants and one-page run: the ``--attack`` names and the variants they
make (benchmarks/attack.py, variants.py), the node options an attacked target's cluster
starts with (common.py), the steps of ``make bench-all`` and the page it writes from the
steps' results (benchmarks/benchall.py); and, slow, one attacked PostMark end to end on
real node processes and mounts."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import attack  # noqa: E402
import benchall  # noqa: E402
import common  # noqa: E402
import postmark  # noqa: E402
import seqio  # noqa: E402
import variants  # noqa: E402

from bftfs.testing.byzantine.profiles import PROFILES  # noqa: E402
from bftfs.testing.mounts import fuse_available  # noqa: E402

# Names --------------------------------------------------------------------------------------


def test_every_node_profile_is_a_real_one_and_all_is_every_profile_and_the_client() -> None:
    assert set(attack.NODE_PROFILES) <= set(PROFILES)
    assert attack.attacks_from("all") == [*attack.NODE_PROFILES, "client"]
    assert attack.attacks_from("client-flood, corrupt-fragments,client-flood") == [
        "client-flood",
        "corrupt-fragments",
    ]
    assert attack.attacks_from(None) == []


@pytest.mark.parametrize("bad", ["no-such-profile", "client-sleep", "fab-silent"])
def test_an_unknown_attack_is_refused_naming_the_known_ones(bad: str) -> None:
    with pytest.raises(SystemExit, match="corrupt-fragments"):
        attack.attacks_from(f"client,{bad}")


def test_the_client_parts() -> None:
    assert attack.client_parts("client") == attack.CLIENT_PARTS
    assert attack.client_parts("client-hoard") == ("hoard",)
    # The watcher is a correct second mount, named on its own, never part of ``client``.
    assert attack.attacks_from("client-watch") == ["client-watch"]
    assert attack.client_parts("client-watch") == ("watch",)
    assert "watch" not in attack.client_parts("client")
    assert attack.is_client("client-forge") and not attack.is_client("rational")


def test_the_verdict_is_the_bar() -> None:
    assert attack.verdict(0.7) == "meets 0.7x"
    assert attack.verdict(0.69) == "BELOW 0.7x"
    assert attack.verdict(None) == "no figure"


# Variants -----------------------------------------------------------------------------------


def test_attacked_variants_follow_each_sound_bftfs_target_and_name_their_twin() -> None:
    specs = [
        common.local_spec(),
        common.bftfs_spec(1, 1),
        common.bftfs_spec(1, 1, down=(0,)),
        common.bftfs_spec(2, 2),
    ]
    out = variants.expand(specs, False, None, ["client", "rational"])
    assert [s.name for s in out] == [
        "local",
        "bftfs b=1",
        "bftfs b=1 under client",
        "bftfs b=1 under rational",
        "bftfs b=1 (1 down)",
        "bftfs b=2",
        "bftfs b=2 under client",
        "bftfs b=2 under rational",
    ]
    assert variants.twins(out)["bftfs b=2 under rational"] == ["bftfs b=2", "attacked / healthy"]
    assert "bftfs b=1" not in variants.twins(out)


def test_a_node_profile_starts_on_node_0_and_the_client_attack_starts_no_liar() -> None:
    spec = common.bftfs_spec(1, 1, corrupt=(1,))
    liar = variants.expand([spec], False, None, ["forge-recalls", "client"])
    assert liar == [spec]  # a corrupting target gets no attacked twin
    healthy = common.bftfs_spec(1, 1)
    node, client = variants.expand([healthy], False, None, ["forge-recalls", "client"])[1:]
    assert common.node_args(node) == {0: ["--byzantine", "forge-recalls"]}
    assert common.node_args(client) == {}
    assert common.node_args(spec) == {1: ["--byzantine", "corrupt-fragments"]}


@pytest.mark.parametrize("parse", [postmark.parse_args, seqio.parse_args])
def test_postmark_and_seqio_take_attack_and_record_it(parse: Any) -> None:
    args = parse(["--attack", "client,rational"])
    assert variants.config(args)["attack"] == ["client", "rational"]
    specs = variants.expand_args([common.bftfs_spec(1, 1)], args)
    assert [s.attack for s in specs] == ["", "client", "rational"]


# bench-all ----------------------------------------------------------------------------------


def _flag(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_set_runs_every_workload_then_the_attacks_and_the_b_curve() -> None:
    plan = benchall.steps(False, 3, benchall.ALL_TARGETS, "all")
    assert [s.key for s in plan] == [
        "andrew",
        "postmark",
        "seqio",
        "tools",
        "postmark-attack",
        "seqio-attack",
        "postmark-b",
    ]
    for s in plan:
        assert (BENCH / s.script).exists()
        assert _flag(s.args, "--runs") == "3"
    side = {s.key: s.args for s in plan if s.kind == "side"}
    assert all(_flag(a, "--targets") == benchall.ALL_TARGETS for a in side.values())
    # The side-by-side PostMark and big file keep their sizes; the attacks run smaller ones.
    assert (_flag(side["postmark"], "--files"), _flag(side["postmark"], "--transactions")) == (
        "1000",
        "4000",
    )
    assert _flag(side["seqio"], "--size") == "200"
    pm_attack, seq_attack, b = plan[4].args, plan[5].args, plan[6].args
    assert (_flag(pm_attack, "--files"), _flag(pm_attack, "--transactions")) == ("300", "1000")
    assert _flag(seq_attack, "--size") == "64"
    assert _flag(pm_attack, "--attack") == _flag(seq_attack, "--attack") == "all"
    assert _flag(pm_attack, "--targets") == "bftfs" and _flag(pm_attack, "--bs") == "1"
    assert _flag(b, "--bs") == "1,2" and b.count("--bs") == 1
    assert (_flag(b, "--files"), _flag(b, "--transactions")) == ("1000", "4000")


def test_the_tools_step_runs_every_tool_and_both_counts_of_each() -> None:
    """Every workload issue 64 names is a case of the one tools step, in both modes' sizes
    (``tools.py`` parses them: no flag the step passes is unknown to it)."""
    import tools

    for short in (False, True):
        step = next(s for s in benchall.steps(short, 1, "local", "client") if s.key == "tools")
        args = tools.parse_args(list(step.args))
        assert args.tools == list(tools.TOOLS)
        if short:
            continue
        assert (args.fio_jobs, args.fsmark_threads, args.dbench_clients) == ([1, 4],) * 3
        assert args.fio_seconds == 4 and args.dbench_seconds == 8 and args.subset == "kernel"
        args.idle = 0.0
        keys = [c.key for t in args.tools for c in tools.tool_cases(t, args)]
        for key in ("seqwrite-j1", "seqread-j4", "randread-j1", "randwrite-fsync-j4"):
            assert f"fio/{key}" in keys
        for key in ("untar", "find", "grep", "du", "git", "rm"):
            assert f"kerneltree/{key}" in keys
        assert {"fsmark/threads-1", "fsmark/threads-4", "dbench/clients-4"} <= set(keys)


def test_every_attack_of_a_run_shares_one_healthy_twin() -> None:
    step = benchall.steps(False, 3, benchall.ALL_TARGETS, "all")[4]
    args = postmark.parse_args(list(step.args))
    specs = variants.expand_args(postmark.specs_from_args(args), args)
    healthy = [s.name for s in specs if not s.attack]
    assert healthy == ["bftfs b=1"]
    assert len(specs) == 1 + len(attack.NODE_PROFILES) + 1
    assert {twin for twin, _ in variants.twins(specs).values()} == {"bftfs b=1"}


def test_short_mode_defaults_and_a_typo_in_attack_is_refused_at_once() -> None:
    args = benchall.parse_args(["--short"])
    assert (args.runs, args.targets, args.name) == (1, "local,bindfs,bftfs", "bench-all-short")
    with pytest.raises(SystemExit):
        benchall.parse_args(["--attack", "corupt-fragments"])


def _results() -> list[dict[str, Any]]:
    """Steps' results as the benchmarks write them (the fields the page reads)."""

    def step(key: str, kind: str, **data: Any) -> dict[str, Any]:
        return {**data, "_step": {"key": key, "kind": kind, "rc": 0, "wall_s": 5.0, "command": key}}

    return [
        step(
            "postmark",
            "side",
            benchmark="postmark",
            summary={"local": {"tps_median": 1000.0}, "bftfs b=1": {"tps_median": 250.0}},
            skipped={"glusterfs": "glusterd is not installed"},
        ),
        step(
            "andrew",
            "side",
            benchmark="andrew",
            summary={"local": {"median": {"total": 2.0}}, "bftfs b=1": {"median": {"total": 8.0}}},
        ),
        step(
            "fsmark",
            "side",
            benchmark="fsmark",
            tool="fs_mark",
            config={"cases": [{"key": "threads-1", "label": "files + fsync", "unit": "files/s"}]},
            summary={"threads-1": {"local": {"median": 400.0}, "bftfs b=1": {"median": 100.0}}},
        ),
        step(
            "postmark-attack",
            "attack",
            benchmark="postmark",
            twins={"bftfs b=1 under client": ["bftfs b=1", "attacked / healthy"]},
            summary={
                "bftfs b=1": {"tps_median": 200.0},
                "bftfs b=1 under client": {"tps_median": 100.0},
            },
        ),
        step(
            "seqio-attack",
            "attack",
            benchmark="seqio",
            twins={"bftfs b=1 under rational": ["bftfs b=1", "attacked / healthy"]},
            summary={
                "bftfs b=1": {"read_MBps_median": 50.0},
                "bftfs b=1 under rational": {"read_MBps_median": 45.0},
            },
        ),
        step(
            "postmark-b",
            "b",
            benchmark="postmark",
            summary={"bftfs b=1": {"tps_median": 200.0}, "bftfs b=2": {"tps_median": 150.0}},
        ),
    ]


def test_the_page_holds_ratios_to_local_the_attack_verdicts_b_and_every_skip(
    tmp_path: Path,
) -> None:
    args = benchall.parse_args(["--short", "--out", str(tmp_path)])
    page = benchall.collect(_results(), args, 300.0)
    md = benchall.write_page(page, tmp_path, args.name)
    assert (tmp_path / "bench-all-short.md").read_text() == md
    assert "| PostMark | tx/s | 1000 | 250 (0.25x) |" in md.replace(" | bindfs", "")
    assert "| Andrew, total | s | 2 | 8 (0.25x) |" in md  # a time: local's over the target's
    assert "| fs_mark: files + fsync | files/s | 400 | 100 (0.25x) |" in md
    assert "| PostMark tx/s | bftfs b=1 under client | 100 | 200 | 0.50x | BELOW 0.7x |" in md
    assert (
        "| big file cold read MB/s | bftfs b=1 under rational | 45 | 50 | 0.90x | meets 0.7x |"
        in md
    )
    assert "| 200 | 150 | 0.75x | meets 0.7x |" in md
    assert "- glusterfs: postmark: glusterd is not installed" in md
    assert "- cephfs: left out of the short mode" in md
    svg = ET.parse(tmp_path / "bench-all-short.svg").getroot()
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "0.50x" in texts and "0.90x" in texts and "0.75x" in texts


def test_a_step_that_wrote_nothing_is_on_the_page_with_its_exit_status(tmp_path: Path) -> None:
    step = benchall.Step("fio", "fio.py", ("--runs", "1", "--targets", "no-such-target"))
    data = benchall.run_step(step, tmp_path, lambda _msg: None)
    assert data["_step"]["rc"] != 0 and benchall.figures_of(data) == []
    args = benchall.parse_args(["--short"])
    md = benchall.markdown(benchall.collect([data], args, 1.0))
    assert f"`{data['_step']['command']}`: exit {data['_step']['rc']}" in md


# End to end ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not fuse_available(), reason="needs FUSE")
@pytest.mark.skipif(shutil.which("postmark") is None, reason="needs postmark")
def test_a_short_attacked_postmark_runs_beside_its_twin_and_the_client_attacked(
    tmp_path: Path,
) -> None:
    # A tiny PostMark: three fresh clusters' starts and stops are most of the time, and
    # the client attack runs through the whole attacked run (4 s: thousands of floods,
    # frames and walks).
    cmd = [sys.executable, str(BENCH / "postmark.py"), "--targets", "bftfs", "--bs", "1"]
    cmd += ["--no-fsync-bs", "", "--files", "10", "--transactions", "20", "--attack"]
    cmd += ["client,corrupt-fragments", "--out", str(tmp_path), "--name", "pm", "--no-plot"]
    cmd += ["--quiet"]
    done = subprocess.run(cmd, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((tmp_path / "pm.json").read_text())
    runs = {r["target"]: r for r in result["runs"]}
    assert set(runs) == {"bftfs b=1", "bftfs b=1 under client", "bftfs b=1 under corrupt-fragments"}
    assert all("tps" in r for r in runs.values()), runs
    attacked = runs["bftfs b=1 under client"]["info"]["attack"]
    line = next(x for x in attacked["report"].splitlines() if x.startswith("flood_sent="))
    done = dict(kv.split("=") for kv in line.split())
    assert int(done["flood_sent"]) > 0 and int(done["fuzz_frames"]) > 0 and int(done["walks"]) > 0
    assert attacked["mount"]["leases.taken"] > 0  # its own mount's counters: it hoarded
    assert attacked["mount"]["qu_operations"] > 0  # (and its metrics: it walked)
    assert (
        runs["bftfs b=1 under corrupt-fragments"]["info"]["attack"]["profile"]
        == "corrupt-fragments"
    )


# PostMark's location ------------------------------------------------------------------------

#: The length of an attacked variant's PostMark directory (``/var/tmp/bftfs-postmark-
#: XXXXXXXX/bftfs_b=1_under_reject-everything-r1/mnt/postmark``): past PostMark 1.51's path
#: buffer (about 80 characters), short of the lengths at which it crashes outright.
OVERRUN = 83


@pytest.fixture
def deep_site() -> Iterator[SimpleNamespace]:
    """A site whose PostMark directory's path is :data:`OVERRUN` characters long."""
    top = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))
    try:
        parent = top / ("d" * (OVERRUN - len(str(top)) - len("//postmark")))
        parent.mkdir()
        assert len(str(parent / "postmark")) == OVERRUN
        yield SimpleNamespace(path=parent)
    finally:
        shutil.rmtree(top)


def _pm_args() -> argparse.Namespace:
    return argparse.Namespace(
        files=100, transactions=300, seed=42, size_min=500, size_max=10000, cap=60.0
    )


@pytest.mark.skipif(shutil.which("postmark") is None, reason="needs postmark (make bench-setup)")
def test_postmark_runs_the_configured_workload_however_long_its_directory_path(
    tmp_path: Path, deep_site: SimpleNamespace
) -> None:
    (tmp_path / "s").mkdir()
    quiet = common.Progress("t", quiet=True)
    deep = postmark.run_postmark(deep_site, tmp_path, _pm_args(), quiet)["postmark_report"]
    short = postmark.run_postmark(SimpleNamespace(path=tmp_path / "s"), tmp_path, _pm_args(), quiet)
    assert deep["created"] == deep["deleted"] == short["postmark_report"]["created"]


@pytest.mark.skipif(shutil.which("postmark") is None, reason="needs postmark (make bench-setup)")
def test_a_postmark_run_that_removes_fewer_files_than_it_made_fails(
    tmp_path: Path, deep_site: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = postmark.postmark_config

    def absolute(location: Any, *rest: Any) -> str:  # the location as it used to be given
        return made(deep_site.path / location, *rest)

    monkeypatch.setattr(postmark, "postmark_config", absolute)
    with pytest.raises(postmark.PostMarkError, match="removed"):
        postmark.run_postmark(deep_site, tmp_path, _pm_args(), common.Progress("t", quiet=True))


def test_the_other_mounts_counters_are_read_from_its_report() -> None:
    """The Byzantine or watching client prints its own mount's counters last; the
    benchmark keeps them beside its report (a malformed or missing line: none)."""
    report = "attacking\nwalks=3 stats=900\nmount " + json.dumps(
        {"qu_operations.fs.askpub": 12, "leases.held": 3, "note": "x"}
    )
    assert attack.mount_counters_in(report) == {"qu_operations.fs.askpub": 12.0, "leases.held": 3.0}
    assert attack.mount_counters_in("attacking\nmount {not json") == {}
    assert attack.mount_counters_in("attacking\n") == {}
