"""Configuration discovery (issue 67): a command finds its cluster without ``--dir``, by
``--config``/``--dir``, ``$BFTFS_CONFIG``, ``$BFTFS_DIR``, the per-user directory, the
system directories, ``./nodes``, first match wins; a place named explicitly that holds no
cluster is an error naming it; when nothing is found the error lists every place searched,
in order.  Pure: temporary directories stand in for ``$HOME``, ``/etc/bftfs`` and
``/var/lib/bftfs``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bftfs.cli import discover
from bftfs.cli.discover import NotFound, find_config, home_to_create


@pytest.fixture
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    """The working directory is ``tmp_path/work`` (for ``./nodes``), restored after."""
    work = tmp_path / "work"
    work.mkdir()
    old = Path.cwd()
    os.chdir(work)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def cluster(d: Path) -> Path:
    """A directory holding a ``cluster.toml`` (its content does not matter here)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "cluster.toml").write_text("# test\n")
    return d / "cluster.toml"


def test_each_place_in_turn_first_match_wins(in_tmp: Path) -> None:
    home = in_tmp / "home"
    etc, var = in_tmp / "etc-bftfs", in_tmp / "var-lib-bftfs"
    env = {"HOME": str(home)}
    dirs = (etc, var)

    def found(env: dict[str, str], **flags: Path) -> Path:
        return find_config(env=env, system_dirs=dirs, **flags)

    local = cluster(Path("nodes"))
    assert found(env) == local
    assert found(env) == Path("nodes/cluster.toml")
    v = cluster(var)
    assert found(env) == v
    e = cluster(etc)
    assert found(env) == e
    u = cluster(home / ".config" / "bftfs")
    assert found(env) == u
    x = cluster(in_tmp / "xdg" / "bftfs")
    assert found({**env, "XDG_CONFIG_HOME": str(in_tmp / "xdg")}) == x
    d = cluster(in_tmp / "bydir")
    assert found({**env, "BFTFS_DIR": str(in_tmp / "bydir")}) == d
    c = cluster(in_tmp / "bundle")
    both = {**env, "BFTFS_DIR": str(in_tmp / "bydir"), "BFTFS_CONFIG": str(c)}
    assert found(both) == c
    # BFTFS_CONFIG may name the unpacked bundle's directory instead of its file.
    assert found({**env, "BFTFS_CONFIG": str(in_tmp / "bundle")}) == c
    # Flags beat everything.
    flagged = cluster(in_tmp / "flag")
    assert found(both, dir=in_tmp / "flag") == flagged
    assert found(both, config=flagged) == flagged


def test_a_named_place_without_a_cluster_is_an_error_naming_it(in_tmp: Path) -> None:
    cluster(Path("nodes"))  # a fall-back that must not be taken
    env = {"HOME": str(in_tmp / "home")}
    missing = in_tmp / "missing"
    for flags, extra, names in (
        ({"dir": missing}, {}, "--dir"),
        ({"config": missing / "cluster.toml"}, {}, "--config"),
        ({}, {"BFTFS_DIR": str(missing)}, "$BFTFS_DIR"),
        ({}, {"BFTFS_CONFIG": str(missing / "cluster.toml")}, "$BFTFS_CONFIG"),
    ):
        with pytest.raises(NotFound) as e:
            find_config(env={**env, **extra}, system_dirs=(), **flags)  # type: ignore[arg-type]
        assert names in str(e.value) and str(missing) in str(e.value), str(e.value)


def test_a_bundle_archive_is_refused_with_how_to_unpack_it(in_tmp: Path) -> None:
    archive = in_tmp / "client0.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(NotFound, match="bundle archive: unpack it"):
        find_config(env={"BFTFS_CONFIG": str(archive)}, system_dirs=())


def test_nothing_found_names_every_place_in_order(in_tmp: Path) -> None:
    home = in_tmp / "home"
    dirs = (in_tmp / "etc-bftfs", in_tmp / "var-lib-bftfs")
    with pytest.raises(NotFound) as e:
        find_config(env={"HOME": str(home)}, system_dirs=dirs)
    text = str(e.value)
    places = [
        "--dir",
        "$BFTFS_CONFIG",
        "$BFTFS_DIR",
        str(home / ".config" / "bftfs" / "cluster.toml"),
        str(dirs[0] / "cluster.toml"),
        str(dirs[1] / "cluster.toml"),
        "nodes/cluster.toml",
    ]
    at = [text.index(p) for p in places]
    assert at == sorted(at), text
    assert "bftfs init" in text


def test_the_real_system_directories_are_the_bundles() -> None:
    """The systemd units and ``bftfs bundle`` unpack into ``/var/lib/bftfs``: searched."""
    unit = (Path(discover.__file__).parent.parent / "systemd" / "bftfs-node@.service").read_text()
    assert "/var/lib/bftfs/cluster.toml" in unit
    assert Path("/var/lib/bftfs") in discover.SYSTEM_DIRS


def test_creating_never_searches_system_places(in_tmp: Path) -> None:
    assert home_to_create(None, {}) == Path("nodes")
    assert home_to_create(Path("x"), {"BFTFS_DIR": "y"}) == Path("x")
    assert home_to_create(None, {"BFTFS_DIR": "y", "BFTFS_CONFIG": "z/cluster.toml"}) == Path("y")
    assert home_to_create(None, {"BFTFS_CONFIG": "z/cluster.toml"}) == Path("z")
