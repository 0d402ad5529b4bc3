"""A node's store carries its format (issue 67): a newer one is refused at start with a
message naming both formats, an older one is migrated step by step, an unstamped one (made
before the stamp) is taken as format 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import pytest

from bftfs import STORE_FORMAT
from bftfs.node import storeformat
from bftfs.node.store import Store
from bftfs.node.storeformat import FORMAT_KEY, META_DB, StoreFormatError

MAP = 1 << 24


def _stamp(path: Path) -> int | None:
    env = lmdb.open(str(path), map_size=MAP, max_dbs=8)
    try:
        with env.begin() as txn:
            raw = txn.get(FORMAT_KEY, db=env.open_db(META_DB, txn=txn, create=False))
        return None if raw is None else int(raw)
    finally:
        env.close()


def _write_raw(path: Path, db: bytes, key: bytes, value: bytes) -> None:
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=MAP, max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(db, txn=txn))
    env.close()


def test_a_new_store_is_stamped_with_the_current_format(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", map_size=MAP, durable=False)
    assert store.format == STORE_FORMAT
    store.close()
    assert _stamp(tmp_path / "s") == STORE_FORMAT


def test_a_store_made_before_the_stamp_is_format_1_and_keeps_its_data(tmp_path: Path) -> None:
    """Taken as format 1 and brought to the current format (format 2 rewrites nothing:
    a version's answer may be stored split from then on)."""
    _write_raw(tmp_path / "s", b"qu.objects", b"k", b"v")
    store = Store(tmp_path / "s", map_size=MAP, durable=False)
    assert store.format == STORE_FORMAT == 2
    assert store.read(lambda kv: kv.get("qu.objects", b"k")) == b"v"
    store.close()
    assert _stamp(tmp_path / "s") == STORE_FORMAT


def test_a_store_of_a_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    newer = str(STORE_FORMAT + 1).encode()
    _write_raw(tmp_path / "s", META_DB, FORMAT_KEY, newer)
    with pytest.raises(StoreFormatError, match=rf"format {STORE_FORMAT + 1}.*up to {STORE_FORMAT}"):
        Store(tmp_path / "s", map_size=MAP, durable=False)
    assert _stamp(tmp_path / "s") == STORE_FORMAT + 1


def test_an_older_store_is_migrated_once_step_by_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_raw(tmp_path / "s", b"qu.objects", b"k", b"old")  # unstamped: format 1
    steps: list[int] = []

    def one_to_two(env: Any, txn: Any) -> None:
        steps.append(1)
        txn.put(b"k", b"new", db=env.open_db(b"qu.objects", txn=txn))

    monkeypatch.setattr(storeformat, "STORE_FORMAT", 2)
    monkeypatch.setitem(storeformat.MIGRATIONS, 1, one_to_two)
    for _ in range(2):
        store = Store(tmp_path / "s", map_size=MAP, durable=False)
        assert store.format == 2
        assert store.read(lambda kv: kv.get("qu.objects", b"k")) == b"new"
        store.close()
    assert steps == [1]  # the second open found it done
    assert _stamp(tmp_path / "s") == 2


def test_a_node_on_a_newer_store_exits_naming_both_formats(tmp_path: Path) -> None:
    home = tmp_path / "c"
    cli = [sys.executable, "-m", "bftfs"]
    subprocess.run(
        [*cli, "init", "--dir", str(home), "--map-size", "64M"], check=True, capture_output=True
    )
    _write_raw(home / "node0" / "lmdb", META_DB, FORMAT_KEY, str(STORE_FORMAT + 1).encode())
    r = subprocess.run(
        [*cli, "node", "--config", str(home / "cluster.toml"), "--id", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert f"format {STORE_FORMAT + 1}" in r.stderr and "Traceback" not in r.stderr, r.stderr
