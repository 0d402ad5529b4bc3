"""``bftfs node replace`` on a cluster of groups interrupted at each of its writes
(docs/layout.md, "Replacing a node of a group", "A crash during the replacement").

No processes: the replacement writes files only (its push is ``--offline`` here), so a
crash is injected by making one write fail (a fault injection: ``Path.replace`` or
``Path.unlink`` of one file raising ``OSError``, as a full disk or a kill at that point
would leave it), never by replacing a part under test.  After each, the next command that
reads the cluster (``cli/common.cluster_of``, as ``status``, ``up``, ``node start``,
``mount`` do) must see one consistent cluster: the old machine everywhere, or the new one
everywhere with its key in its data directory; and running the same ``bftfs node replace
I --address A --offline`` again must finish the replacement, not refuse the address.
"""

from __future__ import annotations

import argparse
import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bftfs.cli.common import cluster_of
from bftfs.cli.main import main
from bftfs.config import ClusterConfig
from bftfs.crypto import Identity
from bftfs.ids import NodeId
from bftfs.layout import admin as layout_admin
from bftfs.layout import codec
from bftfs.layout.groups import group_config, load_layout
from bftfs.layout.model import LayoutError
from bftfs.local import init_cluster, remove_cluster

#: The new machine's address (nothing listens: no process is started).
NEW = ("127.0.0.1", 23199)


@contextmanager
def failing(monkeypatch: pytest.MonkeyPatch, name: str, how: str = "replace") -> Iterator[None]:
    """Writes (``how="replace"``: the atomic rename that lands a file) or removals
    (``"unlink"``) of the file called ``name`` fail with ENOSPC while inside."""
    real = getattr(Path, how)

    def fault(self: Path, *args: object, **kw: object) -> object:
        target = Path(str(args[0])) if how == "replace" else self
        if target.name == name:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(self, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(Path, how, fault)
        yield


def _cluster(tmp_path: Path) -> tuple[ClusterConfig, Path, int]:
    cfg = init_cluster(
        tmp_path / "c", clients=1, groups=2, t=1, b=0, ports=list(range(23100, 23108))
    )
    held = load_layout(cfg)
    assert held is not None
    return cfg, cfg.home / "cluster.toml", held.groups[1].members[2]


def _next_command(path: Path) -> ClusterConfig:
    """What ``bftfs status`` (or ``up``, ``node start``, ``mount``) starts from."""
    args = argparse.Namespace(config=path, dir=None, command="status", action=None)
    return cluster_of(args)[0]


def _consistent(cfg: ClusterConfig, node: int) -> tuple[int, bytes]:
    """The held layout's version and node ``node``'s key, once checked that ``cluster.toml``,
    the layout and the key file in the node's data directory all name the same machine."""
    layout = load_layout(cfg)  # raises on a key mismatch
    assert layout is not None
    for g in layout.groups:
        group_config(cfg, layout, g.id)
    spec = cfg.node(NodeId(node))
    mine = layout.node(node)
    assert (spec.host, spec.port, spec.public_key) == (mine.host, mine.port, mine.public_key)
    if layout.version > 1:
        assert Identity.load(NodeId(node), spec.key_path).public == mine.public_key
    return layout.version, mine.public_key


def _replace_again(path: Path, node: int) -> int:
    address = f"{NEW[0]}:{NEW[1]}"
    return main(["node", "replace", str(node), "--address", address, "--offline",
                 "--config", str(path)])  # fmt: skip


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("layout.replacing", "replace"),  # the intent (nothing named the new machine yet)
        ("layout.signed", "replace"),  # the layout
        ("cluster.toml", "replace"),  # cluster.toml, the layout written (the defect)
        ("layout.replacing", "unlink"),  # the end, both written, the old process stopped
    ],
)
def test_a_replacement_interrupted_at_any_write_is_completed_by_the_next_command(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    how: str,
) -> None:
    cfg, path, node = _cluster(tmp_path)
    old_key = cfg.node(NodeId(node)).public_key
    new_dir = cfg.home / f"node{node}.l2"
    with failing(monkeypatch, name, how):
        try:
            code: int | None = _replace_again(path, node)  # cut short by the failed write
        except OSError:  # the crash itself, let out
            code = None
    err = capsys.readouterr().err
    first_key = Identity.load(NodeId(node), new_dir / "private" / "key").public
    version, key = _consistent(_next_command(path), node)  # whatever the crash left
    said = capsys.readouterr().err
    if version == 1:  # not committed: the old machine stays, the new key is kept
        assert key == old_key
    else:
        assert version == 2 and key == first_key
    assert ("completed an interrupted `bftfs node replace" in said) == (version == 2), said
    if name == "layout.replacing" and how == "replace":
        assert code == 3 and "nothing changed" in err, err
    else:
        assert code == 3 and "the replacement is decided" in err, err
    assert _replace_again(path, node) == 0  # finishes, "already" or not
    cfg = _next_command(path)
    assert _consistent(cfg, node) == (2, first_key)  # the key made first stays the machine's
    assert cfg.node(NodeId(node)).data_dir == new_dir.resolve()
    assert _replace_again(path, node) == 0  # and again: nothing to do, no layout 3
    assert _consistent(_next_command(path), node) == (2, first_key)
    assert not (cfg.home / "layout.replacing").exists()


def test_a_crash_before_cluster_toml_is_refused_by_a_node_or_mount_reading_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process reading the files without the CLI (a node started by systemd, the mount
    helper) is told the one command that completes the replacement."""
    cfg, path, node = _cluster(tmp_path)
    with failing(monkeypatch, "cluster.toml"), pytest.raises(OSError):
        layout_admin.replace_node(cfg, path, node, NEW, None)
    from bftfs import config as cfgmod

    with pytest.raises(LayoutError, match=r"interrupted `bftfs node replace \d+`.*bftfs status"):
        load_layout(cfgmod.load(path))
    _consistent(_next_command(path), node)


def test_an_interrupted_replacement_without_its_intent_is_finished_by_running_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster left by an older bftfs (the layout written, cluster.toml not, no intent
    file): the key mismatch names the command, and that command, the same address and
    data directory, completes cluster.toml from the layout and the key in the directory."""
    cfg, path, node = _cluster(tmp_path)
    with failing(monkeypatch, "cluster.toml"), pytest.raises(OSError):
        layout_admin.replace_node(cfg, path, node, NEW, None)
    (cfg.home / "layout.replacing").unlink(missing_ok=True)  # as an older bftfs left it
    from bftfs import config as cfgmod

    with pytest.raises(LayoutError, match=rf"bftfs node replace {node} --address 127.0.0.1:"):
        load_layout(cfgmod.load(path))
    assert _replace_again(path, node) == 0
    version, key = _consistent(_next_command(path), node)
    assert version == 2
    assert codec.decode((cfg.home / "layout.signed").read_bytes(), cfg.admin_key or b"")


def test_another_nodes_address_is_still_refused(tmp_path: Path) -> None:
    cfg, path, node = _cluster(tmp_path)
    other = next(s for s in cfg.nodes if s.id != node)
    with pytest.raises(LayoutError, match="address"):
        layout_admin.replace_node(cfg, path, node, (other.host, other.port), None)
    assert not (cfg.home / "layout.replacing").exists()
    assert load_layout(cfg) is not None and load_layout(cfg).version == 1  # type: ignore[union-attr]


def test_removing_the_cluster_removes_a_cut_replacement_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bftfs init --force`` over a cluster whose replacement was cut short: neither the
    intent nor the new machine's key outlives it (a later cluster in the directory must
    not complete or reuse them)."""
    cfg, path, node = _cluster(tmp_path)
    with failing(monkeypatch, "cluster.toml"), pytest.raises(OSError):
        layout_admin.replace_node(cfg, path, node, NEW, None)
    new_dir = cfg.home / f"node{node}.l2"
    assert (cfg.home / "layout.replacing").exists() and new_dir.exists()
    remove_cluster(cfg.home)
    assert not (cfg.home / "layout.replacing").exists() and not new_dir.exists()
