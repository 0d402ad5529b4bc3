"""Tier 4: a sealed cluster as a new user meets it (issue 38): ``bftfs init``'s cluster of
real node processes, a real FUSE mount, ``echo secret-words > mount/f`` - and then no
node's store holds the words (nor a directory's and a file's names), while the mount,
``bftfs cat --at``, ``bftfs log`` and ``bftfs verify`` work as before; a mount without the
volume key is refused up front."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

SECRET = b"secret-words-8c0f27\n"
OLD = b"old-secret-e61d4a-"
BIG = b"big-secret-3b9d10-"
DIR, NAME = "secret-directory-5f7a", "secret-name-09c4e1"


def bftfs(cluster: ProcessCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real command line against ``cluster``."""
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(cluster.home / "cluster.toml")]
    got = subprocess.run(cmd, capture_output=True, timeout=120)
    if check and got.returncode != 0:
        raise AssertionError(f"{cmd} -> {got.returncode}: {got.stderr.decode()}")
    return got


def in_stores(cluster: ProcessCluster, needles: list[bytes]) -> set[bytes]:
    """The needles any file of any node's data directory holds (``grep -r nodes/``)."""
    found = set()
    for spec in cluster.config.nodes:
        for path in spec.data_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found |= {n for n in needles if n in data}
    return found


@pytest.mark.slow
def test_echo_secret_words_to_a_mount_and_no_node_holds_them(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", durable=False) as pc:
        assert pc.config.sealed  # bftfs init seals by default
        old = OLD * 200
        big = BIG * 40_000  # 720 KB: blocks
        with Mount(pc.config, tmp_path / "m", client="client0") as m:
            (m.mountpoint / "f").write_bytes(old)
            moment = time.time_ns()
            (m.mountpoint / "f").write_bytes(SECRET)
            (m.mountpoint / "big").write_bytes(big)
            (m.mountpoint / DIR).mkdir()
            (m.mountpoint / DIR / NAME).write_bytes(b"named")
            assert (m.mountpoint / "f").read_bytes() == SECRET
        assert in_stores(pc, [SECRET, OLD, BIG, DIR.encode(), NAME.encode()]) == set()
        # Another client reads it all: the mount, the history, the scrub.
        with Mount(pc.config, tmp_path / "m1", client="client1") as m:
            assert (m.mountpoint / "f").read_bytes() == SECRET
            assert (m.mountpoint / "big").read_bytes() == big
            assert [p.name for p in (m.mountpoint / DIR).iterdir()] == [NAME]
        at = f"@{moment // 10**9}.{moment % 10**9:09d}"
        assert bftfs(pc, "cat", "/f", "--at", at).stdout == old
        versions = json.loads(bftfs(pc, "log", "/f", "--json").stdout)["versions"]
        assert len(versions) >= 2
        assert bftfs(pc, "cat", f"/{DIR}/{NAME}", "--at", "now").stdout == b"named"
        verify = json.loads(bftfs(pc, "verify", "--json").stdout)
        assert verify["checked"] > 0 and verify["fragments_repaired"] == 0
        # Without the volume key a mount is refused before it starts (exit 5: a key error).
        pc.config.volume_key_path.rename(tmp_path / "elsewhere")
        got = bftfs(pc, "mount", str(tmp_path / "m2"), check=False)
        assert got.returncode == 5 and b"volume" in got.stderr, got.stderr
