"""Issue 64's CephFS peer (benchmarks/cephfs.py) and the kernel-tree workload
(benchmarks/kerneltree.py).

The pure parts: the ``ceph.conf`` built (everything under the scratch directory, size 3
across OSDs, small memory targets), the command lines, the parsers on answers the real
``ceph`` 16.2.15 gave on this machine (trimmed to the fields read, never made up), the
target in every side-by-side benchmark with its note, the skip reason; the kernel tree's
phases' command lines, the subset's check and the tree's counts on a small tar.  Then, when
the tools are installed: the kernel-tree workload on the local disk over a small tarball,
and (slow) a real CephFS cluster booted, holding every object thrice, and stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import andrew  # noqa: E402
import cephfs  # noqa: E402
import common  # noqa: E402
import fio  # noqa: E402
import kerneltree  # noqa: E402
import postmark  # noqa: E402
import seqio  # noqa: E402
from toolbench import ToolError  # noqa: E402

from bftfs import proc  # noqa: E402
from bftfs.testing.mounts import fuse_available  # noqa: E402

# Answers of ceph 16.2.15 on this machine (a cluster cephfs.cluster booted), trimmed --------

#: ``ceph --format json status`` once the cluster was up.
STATUS = (
    '{"fsid": "6c38f50d-bb8a-4bb7-99d5-f5dd05d2e09a", "osdmap": {"epoch": 18, "num_osds": 3, '
    '"num_up_osds": 3, "osd_up_since": 1795965808, "num_in_osds": 3, "osd_in_since": '
    '1795965801, "num_remapped_pgs": 0}, "pgmap": {"pgs_by_state": [{"state_name": '
    '"active+clean", "count": 33}], "num_pgs": 33, "num_pools": 3, "num_objects": 21, '
    '"data_bytes": 2306, "bytes_used": 913244160, "bytes_avail": 24856559616, "bytes_total": '
    "25769803776}}"
)
#: ``ceph --format json fs dump``.
FS_DUMP = (
    '{"epoch": 5, "default_fscid": 1, "standbys": [], "filesystems": [{"mdsmap": {"epoch": 5, '
    '"max_mds": 1, "in": [0], "up": {"mds_0": 4139}, "info": {"gid_4139": {"gid": 4139, '
    '"name": "a", "rank": 0, "state": "up:active"}}, "data_pools": [3], "metadata_pool": 2, '
    '"fs_name": "benchfs"}, "id": 1}]}'
)
#: ``ceph --format json osd pool ls detail``.
POOLS = (
    '[{"pool_id": 1, "pool_name": "device_health_metrics", "type": 1, "size": 3, "min_size": 2, '
    '"pg_num": 1}, {"pool_id": 2, "pool_name": "benchfs_metadata", "type": 1, "size": 3, '
    '"min_size": 2, "pg_num": 16}, {"pool_id": 3, "pool_name": "benchfs_data", "type": 1, '
    '"size": 3, "min_size": 2, "pg_num": 16}]'
)
#: ``ceph --format json osd new <uuid>``, and ``ceph-osd --version``.
OSD_NEW = '{"osdid":3}\n'
VERSION = "ceph version 16.2.15 (618f440892089921c3e944a991122ddc44e60516) pacific (stable)\n"


def _layout() -> cephfs.Layout:
    return cephfs.Layout(Path("/w/base"), "6c38f50d-bb8a-4bb7-99d5-f5dd05d2e09a", (40001, 40002))


def _conf() -> dict[str, str]:
    lines = cephfs.ceph_conf(_layout()).splitlines()
    assert lines[0] == "[global]"
    return dict(line.split(" = ", 1) for line in lines[1:])


# ceph.conf and command lines --------------------------------------------------------------


def test_the_configuration_keeps_three_copies_across_osds_and_everything_in_scratch() -> None:
    conf = _conf()
    assert conf["fsid"] == "6c38f50d-bb8a-4bb7-99d5-f5dd05d2e09a"
    assert conf["mon_host"] == "[v2:127.0.0.1:40001,v1:127.0.0.1:40002]"
    assert conf["osd_pool_default_size"] == "3" and conf["osd_pool_default_min_size"] == "2"
    # All OSDs on one host: replicas are chosen across OSDs, or no PG is ever clean.
    assert conf["osd_crush_chooseleaf_type"] == "0"
    assert conf["osd_pool_default_pg_autoscale_mode"] == "off"
    assert conf["osd_objectstore"] == "bluestore" and conf["bluestore_block_create"] == "true"
    assert int(conf["bluestore_block_size"]) == cephfs.OSD_BLOCK_GIB << 30
    # Small memory targets, yet above the OSD's minimum (ceph config help: 939524096).
    assert 939524096 <= int(conf["osd_memory_target"]) <= 2 << 30
    assert int(conf["mds_cache_memory_limit"]) <= 512 << 20
    paths = {k: v for k, v in conf.items() if v.startswith("/")}
    assert {"run_dir", "log_file", "osd_data", "mon_data", "admin_socket"} <= set(paths)
    assert all(v.startswith("/w/base/") for v in paths.values())
    assert conf["osd_data"] == "/w/base/$name" and conf["log_file"] == "/w/base/log/$name.log"


def test_command_lines_name_our_configuration_and_run_in_the_foreground() -> None:
    lay = _layout()
    conf = "/w/base/ceph.conf"
    assert cephfs.monmap_cmd(lay) == [
        "monmaptool", "--create", "--clobber", "--fsid", lay.fsid,
        "--addv", "a", "[v2:127.0.0.1:40001,v1:127.0.0.1:40002]", "/w/base/monmap",
    ]  # fmt: skip
    assert cephfs.daemon_cmd(lay, "osd", "2") == ["ceph-osd", "-f", "-c", conf, "-i", "2"]
    mkfs = cephfs.mkfs_cmd(lay, "osd", "0", "--osd-uuid", "u")
    assert mkfs == ["ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--osd-uuid", "u"]
    assert cephfs.ceph_cmd(lay, "status")[:3] == ["ceph", "-c", conf]
    assert cephfs.ceph_cmd(lay, "status")[-3:] == ["--format", "json", "status"]
    assert cephfs.fuse_cmd(lay) == [
        "ceph-fuse", "-f", "-c", conf, "-n", "client.admin", "/w/base/mnt",
    ]  # fmt: skip


# Parsing the cluster's answers -------------------------------------------------------------


def test_the_parsers_read_what_ceph_16_2_printed() -> None:
    status = json.loads(STATUS)
    assert cephfs.pgs_clean(status) == (33, 33)
    assert cephfs.osds_up(status) == 3
    assert cephfs.mds_active(json.loads(FS_DUMP))
    assert not cephfs.mds_active(json.loads(FS_DUMP), "otherfs")
    assert cephfs.pool_sizes(json.loads(POOLS)) == {
        "device_health_metrics": 3,
        "benchfs_metadata": 3,
        "benchfs_data": 3,
    }
    assert cephfs.osd_id(OSD_NEW) == 3
    assert cephfs.parse_version(VERSION) == "Ceph 16.2.15"
    assert cephfs.parse_version("") is None


def test_a_cluster_not_yet_ready_is_seen_as_such() -> None:
    # The same answers with states a booting cluster passes through.
    status = json.loads(STATUS)
    status["pgmap"]["pgs_by_state"] = [
        {"state_name": "active+clean", "count": 20},
        {"state_name": "creating+peering", "count": 13},
    ]
    status["osdmap"]["num_up_osds"] = 2
    assert cephfs.pgs_clean(status) == (20, 33)
    assert cephfs.osds_up(status) == 2
    assert cephfs.pgs_clean({}) == (0, 0) and cephfs.osds_up({}) == 0
    dump = json.loads(FS_DUMP)
    dump["filesystems"][0]["mdsmap"]["info"]["gid_4139"]["state"] = "up:creating"
    assert not cephfs.mds_active(dump)
    with pytest.raises(cephfs.CephError, match="no osd id"):
        cephfs.osd_id("Error EEXIST: uuid already in use")


# The target in the benchmarks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "parse", [andrew.parse_args, postmark.parse_args, seqio.parse_args, fio.parse_args]
)
def test_every_side_by_side_benchmark_accepts_cephfs(parse: Any) -> None:
    targets = "local,glusterfs,seaweedfs,moosefs,cephfs,bftfs"
    args = parse(["--targets", targets])
    if parse is postmark.parse_args:
        args.bs, args.no_fsync_bs = [1], []
        specs = postmark.specs_from_args(args)
    elif parse is andrew.parse_args:
        specs = andrew.targets_from_args(args)
    elif parse is fio.parse_args:
        specs = fio.toolbench.specs_from_args(args)
    else:
        specs = [common.spec_named(w, 1, 1, True) for w in targets.split(",")]
    assert [s.kind for s in specs if s is not None] == targets.split(",")
    assert common.cephfs_spec() == common.TargetSpec("cephfs", "cephfs")


def test_the_note_says_ceph_fsyncs_only_when_it_ran() -> None:
    result = {
        "config": {"targets": ["local", "cephfs"]},
        "machine": {"tools": {"cephfs": "Ceph 16.2.15"}},
    }
    note = common.peers_note(result)
    assert "Ceph 16.2.15" in note and "OSDs fsync what a client fsyncs" in note
    assert "pool size 3" in note and "glusterfs =" not in note
    result["config"]["targets"] = ["local", "seaweedfs"]
    assert "cephfs" not in common.peers_note(result)


def test_missing_ceph_is_a_skip_reason_naming_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    why = cephfs.why_not()
    assert why is not None and "ceph-osd (Debian package ceph-osd)" in why
    assert "ceph (Debian package ceph-common)" in why and "setup-bench" in why
    assert cephfs.version() is None
    skipped = common.skip_reasons([common.local_spec(), common.cephfs_spec()])
    assert list(skipped) == ["cephfs"]
    with pytest.raises(cephfs.CephError, match="missing"), cephfs.cluster(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing made
    later: dict[str, str] = {}
    err = common.TargetError("CephFS: ceph-mon --mkfs failed")
    assert common.skip_after_failure(common.cephfs_spec(), err, later)
    assert "ceph-mon --mkfs" in later["cephfs"]


# The kernel tree ------------------------------------------------------------------------------


def test_a_subset_is_one_top_level_directory() -> None:
    assert kerneltree.check_subset("kernel/") == "kernel"
    assert kerneltree.check_subset("fs") == "fs"
    assert kerneltree.check_subset(None) is None and kerneltree.check_subset("all") is None
    for bad in ("fs/ext4", "..", "a b", "/"):
        if bad == "/":
            assert kerneltree.check_subset(bad) is None
            continue
        with pytest.raises(SystemExit, match="--subset"):
            kerneltree.check_subset(bad)
    assert kerneltree.parse_args([]).subset == "kernel"
    assert kerneltree.parse_args(["--full"]).subset is None
    assert kerneltree.parse_args(["--subset", "fs"]).subset == "fs"


def test_phase_command_lines() -> None:
    tar, tree = Path("/c/t.tar"), Path("/w/tree")
    cmds = {k: kerneltree.phase_commands(k, tar, tree, "linux") for k, _ in kerneltree.PHASES}
    assert cmds["untar"] == [["tar", "-xf", "/c/t.tar", "-C", "/w/tree"]]
    assert cmds["find"] == [["find", "linux"]]
    assert cmds["grep"] == [["grep", "-r", "-l", "-F", kerneltree.PATTERN, "linux"]]
    assert cmds["du"] == [["du", "-s", "linux"]]
    assert [c[-3:] if c[-1] == "tree" else c[-2:] for c in cmds["git"]] == [
        ["init", "-q"],
        ["add", "-A"],
        ["-q", "-m", "tree"],
    ]
    assert all("safe.directory=*" in c and c[c.index("-C") + 1] == "linux" for c in cmds["git"])
    assert cmds["rm"] == [["rm", "-rf", "linux"]]
    with pytest.raises(ValueError):
        kerneltree.phase_commands("make", tar, tree, "linux")


def _small_tree(tmp_path: Path) -> Path:
    """A tarball shaped like linux-source's: one top directory, nested directories."""
    src = tmp_path / "src" / "linux-source-6.1"
    for d in ("kernel/bpf", "fs/ext4", "Documentation"):
        (src / d).mkdir(parents=True)
    for i, d in enumerate(("kernel", "kernel/bpf", "fs/ext4", "Documentation")):
        (src / d / f"f{i}.c").write_text(f"/* {i} */\n" + ("Byzantine\n" if i == 1 else ""))
    (src / "Makefile").write_text("all:\n")
    out = tmp_path / "linux-source-6.1.tar.xz"
    with tarfile.open(out, "w:xz") as tf:
        tf.add(src, arcname="linux-source-6.1")
    return out


def test_the_tree_is_cached_once_and_counted_as_find_lists_it(tmp_path: Path) -> None:
    tarball = _small_tree(tmp_path)
    assert kerneltree.top_directory(tarball) == "linux-source-6.1"
    progress = common.Progress("t", quiet=True)
    cache = tmp_path / "cache"
    sub = kerneltree.prepare(tarball, "kernel", cache, progress)
    assert sub.name == f"linux-source-6.1-{tarball.stat().st_size}-kernel.tar"
    assert kerneltree.prepare(tarball, "kernel", cache, progress) == sub
    # find lists linux-source-6.1, kernel, kernel/bpf and the two files.
    assert kerneltree.tree_counts(sub) == {
        "top": "linux-source-6.1", "entries": 5, "files": 2, "bytes": 8 + 18,
    }  # fmt: skip
    whole = kerneltree.tree_counts(kerneltree.prepare(tarball, None, cache, progress))
    assert whole["entries"] == 1 + 5 + 4 + 1 and whole["files"] == 5
    assert sorted(p.name for p in cache.iterdir()) == sorted([sub.name, sub.name[:-10] + "all.tar"])
    counts = {"entries": 5}
    assert kerneltree.check_phase("find", ["a\n" * 5], counts) == {"entries": 5}
    with pytest.raises(ToolError, match="find listed 4 entries, the tree has 5"):
        kerneltree.check_phase("find", ["a\n" * 4], counts)
    assert kerneltree.check_phase("du", ["24\tlinux\n"], counts) == {"du_kib": 24}
    assert kerneltree.check_phase("grep", ["linux/x.c\n"], counts) == {"matching_files": 1}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_every_phase_runs_on_the_local_disk_and_leaves_nothing(tmp_path: Path) -> None:
    tarball = _small_tree(tmp_path)
    out = tmp_path / "out"
    rc = kerneltree.main(
        ["--targets", "local", "--tarball", str(tarball), "--subset", "all"]
        + ["--cache", str(tmp_path / "cache"), "--work", str(tmp_path), "--out", str(out)]
        + ["--no-plot", "--quiet"]
    )
    assert rc == 0
    result = json.loads((out / "kerneltree-short.json").read_text())
    runs = {r["case"]: r for r in result["runs"]}
    assert list(runs) == [k for k, _ in kerneltree.PHASES]
    assert all("error" not in r and r["value"] > 0 and r["units"] == 5 for r in runs.values())
    assert runs["find"]["entries"] == 11 and runs["grep"]["matching_files"] == 1
    assert result["config"]["tree"]["files"] == 5
    md = (out / "kerneltree-short.md").read_text()
    assert "| git init, add -A, commit | s |" in md
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("bftfs-kerneltree")] == []


def test_a_failed_phase_is_an_error_not_a_figure(tmp_path: Path) -> None:
    args = argparse.Namespace(
        tar=tmp_path / "missing.tar", cap=30.0, counts={"top": "linux", "files": 1, "entries": 2}
    )
    where = tmp_path / "c0"
    where.mkdir()
    case = kerneltree.cases()[0]
    with pytest.raises(ToolError, match="tar -xf"):
        kerneltree.run_case(case, where, args)
    with pytest.raises(ToolError, match="no tree"):
        kerneltree.run_case(kerneltree.cases()[1], where, args)


# A real cluster ---------------------------------------------------------------------------


def _ours_running(base: Path) -> list[int]:
    return [pid for pid, argv in proc.command_lines() if any(str(base).encode() in a for a in argv)]


@pytest.mark.slow
@pytest.mark.skipif(cephfs.why_not() is not None, reason=f"no CephFS here: {cephfs.why_not()}")
@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
def test_a_ceph_cluster_keeps_three_copies_and_stops_everything(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    with cephfs.cluster(tmp_path) as cf:
        assert set(cf.pids) == {"node-mon", "node-mgr", "node1", "node2", "node3", "node-mds",
                                "mount"}  # fmt: skip
        (cf.mountpoint / "f").write_bytes(data)
        fd = os.open(cf.mountpoint / "f", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        old = cf.pids["mount"]
        cf.remount()
        assert cf.pids["mount"] != old and not proc.process_alive(old)
        assert (cf.mountpoint / "f").read_bytes() == data
        # The file's objects, as the OSDs list them (not the manager's lagging PG
        # statistics), each on three distinct OSDs.
        conf = cf.info["conf"]
        ls = ["rados", "-c", conf, "-p", cephfs.DATA_POOL, "ls"]
        objects = subprocess.run(ls, capture_output=True, text=True, timeout=60).stdout.split()
        assert objects and all(o.endswith(".00000000") for o in objects)
        for obj in objects:
            where = ["ceph", "-c", conf, "--format", "json", "osd", "map", cephfs.DATA_POOL, obj]
            r = subprocess.run(where, capture_output=True, text=True, timeout=60)
            acting = json.loads(r.stdout)["acting"]
            assert len(set(acting)) == cephfs.SIZE == 3, acting
        # The OSDs' BlueStore files are sparse: 8 GiB each, far less on the disk.
        block = tmp_path / "osd.0" / "block"
        assert block.stat().st_size == cephfs.OSD_BLOCK_GIB << 30
        assert block.stat().st_blocks * 512 < 1 << 30
    assert not proc.is_mounted(tmp_path / "mnt")
    assert _ours_running(tmp_path) == []
