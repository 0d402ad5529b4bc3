"""``bftfs group add|finish|show`` on a cluster of groups that is not running (docs/layout.md,
"Adding groups"): no node processes, so the push meets nodes that do not listen (it must
neither hang nor fail), and a crash is injected by making one write fail (a fault
injection, as ``tests/t1_layout_crash.py`` does: ``Path.replace`` or ``Path.unlink`` of one
file, or the write of one new node's key, raising ``OSError`` as a full disk or a kill at
that point would leave it).  After each cut a process reading the files alone sees one
consistent cluster, the next command reading the cluster completes what was committed,
and ``bftfs group add`` run again finishes without making a second set of nodes.

Ports are the free ones ``bftfs init`` and ``group add`` choose (no fixed ports).
"""

from __future__ import annotations

import argparse
import errno
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bftfs import config as cfgmod
from bftfs import crypto
from bftfs.cli.common import cluster_of
from bftfs.cli.main import main
from bftfs.config import ClusterConfig
from bftfs.crypto import Identity
from bftfs.fs.generations.mover import MoveState
from bftfs.fs.generations.partmover import cursor_path
from bftfs.ids import NodeId
from bftfs.layout.groups import load_layout
from bftfs.layout.model import Layout
from bftfs.local import cluster_ports, init_cluster, remove_cluster


@contextmanager
def failing(monkeypatch: pytest.MonkeyPatch, name: str, how: str = "replace") -> Iterator[None]:
    """Writes (``how="replace"``: the atomic rename that lands a file) or removals
    (``"unlink"``) of the file called ``name`` fail with ENOSPC while inside; ``"key"``:
    the write of the key of the node whose data directory is called ``name``."""
    if how == "key":
        real_save = crypto.save_secret

        def key_fault(path: Path, secret: bytes) -> None:
            if path.parent.parent.name == name:
                raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
            real_save(path, secret)

        with monkeypatch.context() as m:
            m.setattr(crypto, "save_secret", key_fault)
            yield
        return
    real = getattr(Path, how)

    def fault(self: Path, *args: object, **kw: object) -> object:
        target = Path(str(args[0])) if how == "replace" else self
        if target.name == name:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(self, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(Path, how, fault)
        yield


def _cluster(tmp_path: Path, groups: int = 2) -> tuple[ClusterConfig, Path]:
    cfg = init_cluster(tmp_path / "c", clients=1, groups=groups, t=1, b=0, map_size=1 << 26)
    return cfg, cfg.home / "cluster.toml"


def _run(path: Path, *argv: str) -> int:
    return main([*argv, "--config", str(path)])


def _next_command(path: Path) -> ClusterConfig:
    """What ``bftfs status`` (or ``up``, ``node start``, ``mount``) starts from."""
    args = argparse.Namespace(config=path, dir=None, command="status", action=None)
    return cluster_of(args)[0]


def _held(cfg: ClusterConfig) -> Layout:
    layout = load_layout(cfg)  # raises when the files disagree
    assert layout is not None
    return layout


def _consistent(path: Path) -> tuple[int, int]:
    """The layout version and node count the files say, read as a process reading them
    alone does (no completion), once checked that every node of the layout is in
    ``cluster.toml`` with its key and every new node's key is in its data directory."""
    cfg = cfgmod.load(path)
    layout = _held(cfg)
    for n in layout.nodes:
        assert cfg.node(NodeId(n.id)).public_key == n.public_key
    for spec in cfg.nodes[8:]:
        assert Identity.load(spec.id, spec.key_path).public == spec.public_key
    return layout.version, len(cfg.nodes)


def test_group_add_makes_a_group_of_new_nodes_and_a_moving_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pushed to eight nodes that do not run: it says so and succeeds, at once."""
    cfg, path = _cluster(tmp_path)
    before = _held(cfg)
    assert _run(path, "group", "add") == 0
    out, err = capsys.readouterr()
    assert "layout 1 -> 2: 85 object and 85 block partitions of 256 move" in out, out
    assert "`bftfs group move` copies the rest" in out and "bftfs node start" in out
    assert "node 0 (not listening)" in err and "node 7 (not listening)" in err, err
    cfg = _next_command(path)
    layout = _held(cfg)
    assert (layout.version, layout.moving, len(layout.groups)) == (2, True, 3)
    assert set(layout.groups[2].members) == set(range(8, 12))
    assert (layout.from_objects, layout.from_blocks) == (before.objects, before.blocks)
    assert len(cfg.nodes) == 12
    ports = {s.port for s in cfg.nodes}
    assert len(ports) == 12
    for spec in cfg.nodes[8:]:
        assert spec.data_dir == (cfg.home / f"node{spec.id}").resolve()
        assert Identity.load(spec.id, spec.key_path).public == spec.public_key
        assert layout.node(spec.id).domain == f"node{spec.id}"
    assert not (cfg.home / "layout.growing").exists()
    assert _run(path, "group", "add", "--offline") == 2  # still moving: no second set
    assert "finish it first" in capsys.readouterr().err
    assert _consistent(path) == (2, 12)


@pytest.mark.parametrize(
    ("name", "how", "committed"),
    [
        ("node9", "key", False),  # a key made, the next one cut: nothing names them
        ("layout.growing", "replace", False),  # the intent: every key made, nothing names them
        ("cluster.toml", "replace", True),  # committed; neither file written
        ("layout.signed", "replace", True),  # cluster.toml written, the layout not
        ("layout.growing", "unlink", True),  # both written, the intent left
    ],
)
def test_a_group_add_cut_at_any_write_is_completed_and_run_again_makes_no_other_nodes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    how: str,
    committed: bool,
) -> None:
    cfg, path = _cluster(tmp_path)
    with failing(monkeypatch, name, how):
        assert _run(path, "group", "add", "--offline") == 3
    err = capsys.readouterr().err
    assert ("the groups are added" in err) == committed, err
    assert ("nothing changed" in err) == (not committed), err
    assert _consistent(path)[0] in (1, 2)  # what a node or mount reading the files meets
    keys = {i: cfg.home / f"node{i}" / "private" / "key" for i in range(8, 12)}
    made = {i: Identity.load(NodeId(i), k).public for i, k in keys.items() if k.exists()}
    after = _next_command(path)
    said = capsys.readouterr().err
    assert _consistent(path) == ((2, 12) if committed else (1, 8))
    assert ("`bftfs group add` again finishes it" in said) == committed, said
    assert (after.home / "layout.growing").exists() == committed
    assert _run(path, "group", "add", "--offline") == 0
    out = capsys.readouterr().out
    assert ("finishing the interrupted `bftfs group add`" in out) == committed, out
    assert _consistent(path) == (2, 12)
    cfg = cfgmod.load(path)
    for i, key in made.items():  # the keys the cut run made are the nodes' keys
        assert cfg.node(NodeId(i)).public_key == key
    assert not (cfg.home / "layout.growing").exists()
    assert _run(path, "group", "add", "--offline") == 2  # moving now: no layout 3
    assert _consistent(path) == (2, 12)


def test_refusals_one_group_domains_and_counts_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = init_cluster(tmp_path / "one", clients=1, t=1, b=0, map_size=1 << 26)
    assert _run(one.home / "cluster.toml", "group", "add") == 3
    assert "one group (made without `bftfs init --groups G`)" in capsys.readouterr().err
    assert _run(one.home / "cluster.toml", "group", "show") == 3
    assert _run(one.home / "cluster.toml", "group", "finish") == 3
    cfg, path = _cluster(tmp_path)
    same = ["--domain", "a", "--domain", "a", "--domain", "b", "--domain", "c"]
    assert _run(path, "group", "add", *same) == 2
    assert "no two nodes of one trust domain" in capsys.readouterr().err
    assert _run(path, "group", "add", "--domain", "a") == 2
    assert "4 new nodes" in capsys.readouterr().err
    assert _run(path, "group", "add", "--address", "127.0.0.1:1") == 2
    assert _run(path, "group", "add", "--domain", "a b", *same[4:], "--domain", "d") == 2
    assert "domain 'a b'" in capsys.readouterr().err
    assert _consistent(path) == (1, 8)
    assert not (cfg.home / "layout.growing").exists() and not (cfg.home / "node8").exists()
    assert _run(path, "group", "add", "--offline", *same[4:], "--domain", "d", "--domain", "e") == 0
    layout = _held(cfgmod.load(path))
    assert [layout.node(i).domain for i in range(8, 12)] == ["b", "c", "d", "e"]


def _cursor(home: Path, version: int, group: int, *, complete: bool) -> None:
    state = MoveState(view=version, source=group, after=None if complete else 123)
    state.complete = complete
    state.save(cursor_path(home, version, group))


def test_group_finish_waits_for_every_cursor_then_ends_the_move(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, path = _cluster(tmp_path)
    assert _run(path, "group", "finish", "--offline") == 2  # layout 1 moves nothing
    assert "nothing to finish" in capsys.readouterr().err
    assert _run(path, "group", "add", "--offline") == 0
    moving = _held(cfgmod.load(path))
    capsys.readouterr()
    assert _run(path, "group", "finish", "--offline") == 2
    assert "group 0: not walked yet; group 1: not walked yet" in capsys.readouterr().err
    _cursor(cfg.home, 2, 0, complete=True)
    _cursor(cfg.home, 2, 1, complete=False)
    assert _run(path, "group", "finish", "--offline") == 2
    err = capsys.readouterr().err
    assert "group 0: complete" in err and "group 1: stopped after object 123" in err, err
    _cursor(cfg.home, 1, 1, complete=True)  # another layout's cursor does not count
    assert _run(path, "group", "finish", "--offline") == 2
    _cursor(cfg.home, 2, 1, complete=True)
    assert _run(path, "group", "show", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["move"]["complete"] and shown["moves"]["objects"]["to"] == {"2": 85}
    assert _run(path, "group", "finish") == 0  # pushed to nodes not running: said, not failed
    out, err = capsys.readouterr()
    assert "layout 3: the move of layout 2 is done" in out and "not listening" in err
    done = _held(cfgmod.load(path))
    assert (done.version, done.moving, len(done.groups)) == (3, False, 3)
    assert (done.objects, done.blocks) == (moving.objects, moving.blocks)
    assert _run(path, "group", "finish", "--offline") == 0  # run again: pushes layout 3 again
    assert "layout 3 moves no partitions" in capsys.readouterr().out
    assert _held(cfgmod.load(path)).version == 3
    assert _run(path, "group", "add", "--offline") == 0  # the next growth may start
    assert _held(cfgmod.load(path)).version == 4


def test_group_finish_force_skips_the_cursors_and_says_what_it_risks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, path = _cluster(tmp_path)
    with failing(monkeypatch, "layout.growing", "unlink"):
        assert _run(path, "group", "add", "--offline") == 3  # its intent left
    assert _run(path, "group", "finish", "--force", "--offline") == 2  # add not finished
    assert "run `bftfs group add` again first" in capsys.readouterr().err
    assert _run(path, "group", "add", "--offline") == 0
    capsys.readouterr()
    assert _run(path, "group", "finish", "--force", "--offline") == 0
    err = capsys.readouterr().err
    assert "finishing anyway (--force)" in err and "read as missing or fail" in err, err
    assert not _held(cfgmod.load(path)).moving


def test_group_show_names_what_moves_and_an_interrupted_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, path = _cluster(tmp_path)
    assert _run(path, "group", "show") == 0
    assert "layout 1 moves no partitions" in capsys.readouterr().out
    with failing(monkeypatch, "layout.growing", "unlink"):
        assert _run(path, "group", "add", "--offline", "--groups", "2") == 3
    capsys.readouterr()
    assert _run(path, "group", "show") == 0
    out, err = capsys.readouterr()
    assert "to group 2: 64, group 3: 64" in out, out
    assert "mover: group 0: not walked yet; group 1: not walked yet" in out
    assert "an interrupted `bftfs group add` (layout 2)" in out and not err
    assert _run(path, "group", "show", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["moving"] and shown["layout"]["moving"] and shown["interrupted_add"] == 2
    assert shown["moves"]["blocks"]["count"] == 128
    assert shown["move"]["groups"] == {"0": None, "1": None}


def test_removing_the_cluster_removes_a_cut_group_add_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bftfs init --force`` over a cluster whose ``group add`` was cut after its intent
    and before ``cluster.toml``: neither the intent nor the new nodes' keys outlive it."""
    cfg, path = _cluster(tmp_path)
    with failing(monkeypatch, "cluster.toml"):
        assert _run(path, "group", "add", "--offline") == 3
    assert (cfg.home / "layout.growing").exists() and (cfg.home / "node8").exists()
    remove_cluster(cfg.home)
    assert not (cfg.home / "layout.growing").exists() and not (cfg.home / "node8").exists()


def test_an_interrupted_add_a_later_layout_overtook_is_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``bftfs node replace`` between a cut ``group add`` and its rerun issues layout 3
    (still moving): the add's intent names layout 2, which is in the past; the next
    command forgets it (its nodes are in both files) rather than refuse every command."""
    cfg, path = _cluster(tmp_path)
    with failing(monkeypatch, "layout.growing", "unlink"):
        assert _run(path, "group", "add", "--offline") == 3
    port = cluster_ports(cfg.home, 1)[0]  # a free port (nothing starts there: offline)
    assert _run(path, "node", "replace", "9", "--address", f"127.0.0.1:{port}", "--offline") == 0
    capsys.readouterr()
    after = _next_command(path)
    assert "forgot an interrupted `bftfs group add` of layout 2" in capsys.readouterr().err
    assert not (after.home / "layout.growing").exists()
    layout = _held(after)
    assert (layout.version, layout.moving, len(after.nodes)) == (3, True, 12)
    assert layout.node(9).port == port
