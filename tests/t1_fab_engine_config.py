"""``[cluster] engine`` (issue 39, docs/fab.md): Q/U unless a cluster says otherwise; "fab"
is kept through ``cluster.toml``; any other value is refused by name, before anything is
written, by ``bftfs init --engine`` as by a hand-edited file; and FaB's own rule
(``n >= 5b + 1``, ``bftfs.quorums.fab``) names the property a too small cluster breaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bftfs.config import ConfigError, load
from bftfs.local import config_path, init_cluster
from bftfs.thresholds import fab_rule


def test_the_engine_is_q_u_unless_chosen_and_fab_survives_the_file(tmp_path: Path) -> None:
    assert init_cluster(tmp_path / "q", seal=False).engine == "qu"
    assert "engine" not in config_path(tmp_path / "q").read_text()  # old files unchanged
    fab = init_cluster(tmp_path / "f", engine="fab", seal=False)
    assert fab.engine == "fab"
    assert load(config_path(tmp_path / "f")).engine == "fab"


def test_an_unknown_engine_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="engine must be one of 'qu', 'fab', got 'pbft'"):
        init_cluster(tmp_path / "x", engine="pbft", seal=False)
    assert not config_path(tmp_path / "x").exists()
    init_cluster(tmp_path / "y", seal=False)
    path = config_path(tmp_path / "y")
    path.write_text(path.read_text().replace("[cluster]\n", '[cluster]\nengine = "raft"\n'))
    with pytest.raises(ConfigError, match="got 'raft'"):
        load(path)
    r = subprocess.run(
        [sys.executable, "-m", "bftfs", "init", "--dir", str(tmp_path / "z"), "--engine", "x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "engine must be one of" in r.stderr
    assert not config_path(tmp_path / "z").exists()


def test_fab_needs_three_b_plus_one_nodes() -> None:
    """Plain FaB from 5b + 1, Parameterized FaB (commit proofs, t < b) down to 3b + 1."""
    assert fab_rule(6, 1) is None and fab_rule(11, 2) is None
    assert fab_rule(4, 1) is None and fab_rule(5, 1) is None and fab_rule(7, 2) is None
    assert (fab_rule(3, 1) or "").startswith("FaB engine: F0")
    assert (fab_rule(6, 2) or "").startswith("FaB engine: F0")


def test_a_four_node_fab_cluster_is_configured(tmp_path: Path) -> None:
    """`bftfs init --engine fab` on 4 nodes for b = 1: the metadata-only cluster is accepted
    (no Q/U objects, no PASIS blocks on it) and reloads."""
    r = subprocess.run(
        [sys.executable, "-m", "bftfs", "init", "--dir", str(tmp_path / "c"), "--engine", "fab"]
        + ["--n", "4", "--t", "1", "--b", "1", "--no-seal"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    cfg = load(config_path(tmp_path / "c"))
    assert (cfg.n, cfg.b, cfg.engine) == (4, 1, "fab")
