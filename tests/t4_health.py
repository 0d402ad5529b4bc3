"""Running bftfs as operators run storage (issue 21): mounting with mount(8) and fstab, read-only
mounts, a bounded wait when more than t nodes are down (and hard mounts that wait), `bftfs
status` with its mounts, fault columns and exit codes, Prometheus metrics over HTTP.

Real node processes, real mounts; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mount_helpers import REPO
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from bftfs import proc
from bftfs.fuse import control
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

HELPER = Path("/sbin/mount.fuse.bftfs")


def bftfs(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bftfs", *args], capture_output=True, text=True, timeout=120, env=env
    )


def status_json(config: Path) -> tuple[int, dict[str, Any]]:
    r = bftfs("status", "--config", str(config), "--json")
    assert r.returncode in (0, 1, 2), r.stderr
    return r.returncode, json.loads(r.stdout)


@contextlib.contextmanager
def mount_helper_installed(tmp_path: Path) -> Iterator[None]:
    """``/sbin/mount.fuse.bftfs`` running this checkout's helper, for the test's duration
    (bind-mounted over an installed one, which comes back afterwards)."""
    script = tmp_path / "mount.fuse.bftfs"
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m bftfs.fuse.helper "$@"\n'
    )
    script.chmod(0o755)
    if HELPER.exists() or HELPER.is_symlink():
        subprocess.run(["mount", "--bind", str(script), str(HELPER)], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", str(HELPER)], check=False)
    else:
        shutil.copy(script, HELPER)
        try:
            yield
        finally:
            HELPER.unlink(missing_ok=True)


def unmount_and_wait(config: Any, mnt: Path, cmd: list[str]) -> None:
    pid = next((p for p, m in control.known_mounts(config) if m == mnt.resolve()), None)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if pid is not None:
        proc.wait_gone(pid, 30)
    assert control.mounted_fuse(mnt.resolve()) is None


@pytest.mark.slow
@pytest.mark.skipif(os.getuid() != 0, reason="mount(8) with a helper in /sbin needs root")
def test_mount8_fstab_and_read_only(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc:
        config = pc.config.home / "cluster.toml"
        mnt = tmp_path / "m"
        mnt.mkdir()
        with mount_helper_installed(tmp_path):
            try:
                # mount -t: mount(8) runs mount.fuse.bftfs CONFIG DIR -o OPTIONS
                r = subprocess.run(
                    ["mount", "-t", "fuse.bftfs", str(config), str(mnt), "-o", "client=client1"],
                    capture_output=True,
                    text=True,
                )
                assert r.returncode == 0, r.stderr
                assert control.mounted_fuse(mnt.resolve()) == "fuse.bftfs"
                (mnt / "hello").write_text("written through mount(8)\n")
                (mnt / "dir").mkdir()
                source = [
                    line.split()[0]
                    for line in Path("/proc/mounts").read_text().splitlines()
                    if line.split()[1] == str(mnt.resolve())
                ]
                assert source == [str(config.resolve())]
                unmount_and_wait(pc.config, mnt, ["umount", str(mnt)])

                # an fstab line, read-only, with the generic options fstab lines carry
                fstab = tmp_path / "fstab"
                fstab.write_text(
                    f"{pc.config.home}  {mnt}  fuse.bftfs  "
                    "client=client0,ro,attr_timeout=2,timeo=5,_netdev,nofail  0  0\n"
                )
                r = subprocess.run(
                    ["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True
                )
                assert r.returncode == 0, r.stderr
                assert (mnt / "hello").read_text() == "written through mount(8)\n"
                for attempt in (
                    lambda: (mnt / "new").write_text("x"),
                    lambda: (mnt / "hello").write_text("x"),
                    lambda: (mnt / "dir2").mkdir(),
                    lambda: (mnt / "hello").unlink(),
                    lambda: os.chmod(mnt / "hello", 0o600),
                ):
                    with pytest.raises(OSError) as e:
                        attempt()
                    assert e.value.errno == errno.EROFS
                assert (mnt / "hello").read_text() == "written through mount(8)\n"
                opts = [
                    line.split()[3]
                    for line in Path("/proc/mounts").read_text().splitlines()
                    if line.split()[1] == str(mnt.resolve())
                ]
                assert opts and opts[0].split(",")[0] == "ro"
                unmount_and_wait(pc.config, mnt, ["umount", str(mnt)])
            finally:
                if control.mounted_fuse(mnt.resolve()):
                    subprocess.run(["umount", "-l", str(mnt)], check=False)

        # bftfs mount takes the same options; unknown ones are refused by name
        r = bftfs("mount", str(mnt), "--config", str(config), "-o", "ro,client=client1,bogus")
        assert r.returncode == 2 and "bogus" in r.stderr
        r = bftfs("mount", str(mnt), "--config", str(config), "-o", "ro,client=client1")
        try:
            assert r.returncode == 0, r.stderr
            with pytest.raises(OSError) as e:
                (mnt / "hello").write_text("x")
            assert e.value.errno == errno.EROFS
            mode = os.stat(mnt / "hello").st_mode
            assert stat.S_ISREG(mode)
        finally:
            unmount_and_wait(pc.config, mnt, ["fusermount3", "-u", str(mnt)])


@contextlib.contextmanager
def restarted_at_exit(pc: ProcessCluster, nodes: list[int]) -> Iterator[None]:
    """Restart ``nodes`` if they are down when the block ends, so the mounts can be
    unmounted cleanly (a stat of a mount's root fails while the cluster is unavailable)."""
    try:
        yield
    finally:
        for i in nodes:
            if pc.pid(i) is None:
                pc.start(i)


@pytest.mark.slow
def test_beyond_t_failures_eio_comes_within_timeo_and_hard_mounts_wait(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc:
        fresh = {"attr_timeout": 0.0, "entry_timeout": 0.0}  # every stat asks the cluster
        soft = Mount(pc.config, tmp_path / "soft", options="timeo=2", **fresh)
        hard = Mount(
            pc.config, tmp_path / "hard", client="client1", options="hard,timeo=1", **fresh
        )
        with soft, hard, restarted_at_exit(pc, [0, 1]):
            (soft.mountpoint / "f").write_bytes(b"x" * 100_000)
            pc.kill(0)
            pc.kill(1)
            started = time.monotonic()
            with pytest.raises(OSError) as e:
                os.stat(soft.mountpoint / "f")
            took = time.monotonic() - started
            assert e.value.errno == errno.EIO
            # each kernel request waits at most timeo=2 s; a stat makes up to three
            assert took < 10, took
            print(f"stat with 2 of 6 nodes down, timeo=2: EIO after {took:.1f}s")
            log = soft.log_text()
            assert "WARNING bftfs.fuse.operations: lookup of /f answered EIO" in log, log
            assert "fewer than q=" in log

            # the hard mount waits instead, and succeeds once the nodes are back
            reader = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"print(len(open({str(hard.mountpoint / 'f')!r}, 'rb').read()))",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                wait_for(
                    "the hard mount to report waiting",
                    lambda: "hard mount: waiting" in hard.log_text(),
                )
                assert reader.poll() is None
                pc.start(0)
                pc.start(1)
                out, _ = reader.communicate(timeout=60)
                assert reader.returncode == 0 and out.strip() == "100000"
                assert "the cluster answers again" in hard.log_text()
            finally:
                if reader.poll() is None:
                    reader.kill()
                    reader.wait()


@pytest.mark.slow
def test_status_shows_mounts_faults_and_exit_codes(tmp_path: Path) -> None:
    with ProcessCluster(
        tmp_path / "c",
        map_size=1 << 28,
        durable=False,
        inline_limit=0,
        node_args={2: ["--byzantine", "corrupt-fragments"]},
    ) as pc:
        config = pc.config.home / "cluster.toml"
        code, doc = status_json(config)
        assert code == 0 and doc["health"] == "healthy" and doc["mounts"] == []
        with Mount(pc.config, tmp_path / "w") as w:
            data = os.urandom(300_000)
            (w.mountpoint / "file").write_bytes(data)
            with Mount(pc.config, tmp_path / "r", client="client1") as r:
                assert (r.mountpoint / "file").read_bytes() == data  # node 2's fragments: bad

                def corrupt_seen() -> Any:
                    code, doc = status_json(config)
                    node2 = doc["nodes"][2]["faults"]
                    return (code, doc) if node2.get("corrupt") else None

                code, doc = wait_for("the mounts to publish node 2's faults", corrupt_seen)
                assert code == 1 and doc["health"] == "degraded"
                assert any("node 2 caught misbehaving" in p for p in doc["problems"])
                assert not any(doc["nodes"][i]["faults"].get("corrupt") for i in (0, 1, 3, 4, 5))
                states = {m["mountpoint"]: m["state"] for m in doc["mounts"]}
                assert states == {str(w.mountpoint): "alive", str(r.mountpoint): "alive"}
                text = bftfs("status", "-v", "--config", str(config))
                assert text.returncode == 1
                assert "health: DEGRADED" in text.stdout and str(r.mountpoint) in text.stdout
                row = next(
                    line.split()
                    for line in text.stdout.split("per node")[1].splitlines()
                    if line.split()[:1] == ["2"]
                )
                assert int(row[1]) > 0  # the corrupt column

                # a killed daemon shows as dead
                os.kill(r.proc.pid, 9)  # type: ignore[union-attr]
                wait_for(
                    "the killed mount to show dead",
                    lambda: any(
                        m["state"] == "dead" and m["mountpoint"] == str(r.mountpoint)
                        for m in status_json(config)[1]["mounts"]
                    ),
                )
            # more than t nodes down: unavailable
            pc.kill(0)
            code, doc = status_json(config)
            assert code == 1
            pc.kill(1)
            code, doc = status_json(config)
            assert code == 2 and doc["health"] == "unavailable"


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def not_found(address: str, path: str) -> bool:
    """Whether ``path`` on the metrics server answers 404 (only ``/metrics`` is served)."""
    try:
        urllib.request.urlopen(f"http://{address}{path}", timeout=10)
    except urllib.error.HTTPError as e:
        return e.code == 404
    return False


def metric(text: str, name: str, **labels: str) -> float:
    want = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{want} in:\n{text[:3000]}")


@pytest.mark.slow
def test_metrics_over_http(tmp_path: Path) -> None:
    with ProcessCluster(
        tmp_path / "c",
        map_size=1 << 28,
        durable=False,
        inline_limit=0,
        node_args={0: ["--metrics-port", "0"], 2: ["--byzantine", "corrupt-fragments"]},
    ) as pc:
        with Mount(pc.config, tmp_path / "m", options="metrics_port=0") as m:
            data = os.urandom(200_000)
            (m.mountpoint / "f").write_bytes(data)
            with Mount(pc.config, tmp_path / "m2", client="client1") as m2:
                assert (m2.mountpoint / "f").read_bytes() == data
            status = json.loads(control.status_file(pc.config, m.mountpoint).read_text())
            mount_text = scrape(status["metrics"])
            assert metric(mount_text, "bftfs_mount_request_duration_seconds_count", op="write") >= 1
            assert metric(mount_text, "bftfs_mount_request_duration_seconds_sum", op="write") > 0
            assert metric(mount_text, "bftfs_mount_qu_operations_total", method="fs.write") >= 1
            # One family per name (two TYPE lines for one name is not valid exposition).
            types = [ln.split()[2] for ln in mount_text.splitlines() if ln.startswith("# TYPE ")]
            assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
            # Bytes per mount, and a latency histogram by operation (issue 67).
            assert metric(mount_text, "bftfs_mount_written_bytes_total") >= len(data)
            assert metric(mount_text, "bftfs_mount_read_bytes_total") >= 0
            bucket = 'bftfs_mount_request_duration_seconds_bucket{le="+Inf",op="write"}'
            assert bucket in mount_text
            assert metric(mount_text, "bftfs_mount_leases_held") >= 0
            assert not_found(status["metrics"], "/")  # only /metrics answers

        node_address = (pc.config.node(0).data_dir / "metrics.port").read_text().strip()
        node_text = scrape(node_address)
        assert metric(node_text, "bftfs_node_request_duration_seconds_count", kind="qu.request") > 0
        assert metric(node_text, "bftfs_node_request_duration_seconds_sum", kind="qu.request") > 0
        assert metric(node_text, "bftfs_node_lmdb_bytes") > 0
        assert metric(node_text, "bftfs_node_used_bytes") >= 0
        assert metric(node_text, "bftfs_node_backlog_versions") >= 0
        assert 'bftfs_node_request_duration_seconds_bucket{kind="qu.request",le="+Inf"}' in (
            node_text
        )
        assert metric(node_text, "bftfs_node_disk_free_bytes") > 0
        assert not_found(node_address, "/metrics/other")
        families = {f.name for f in text_string_to_metric_families(node_text)}
        assert "bftfs_node_events" not in families  # unrelated counters, one label: split
        for text in (node_text, mount_text):  # Prometheus naming: units and _total
            for f in text_string_to_metric_families(text):
                if f.name.startswith("bftfs_") and f.type == "counter":
                    assert f"{f.name}_total" in text, f.name
                if f.name.startswith("bftfs_") and f.type in ("histogram", "summary"):
                    assert f.name.endswith("_seconds"), f.name
