"""Nodes' trust domains in ``cluster.toml`` (issue 66, ``[[nodes]] domain``): absent in
every existing file (each node its own domain), written back when set, a bad label refused
by the real CLI with exit 3 naming the file and the rule, and a layout built from the
configuration refusing a group of two nodes of one domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from bftfs import config as cfgmod
from bftfs.cli import main
from bftfs.config import ConfigError
from bftfs.layout.builder import build, nodes_of
from bftfs.layout.model import LayoutError
from bftfs.local import init_cluster


def _with_domains(path: Path, domains: list[str]) -> None:
    """Give the file's nodes these domain lines, in order (TOML written by ``init``)."""
    text = path.read_text()
    parts = text.split("[[nodes]]\n")
    assert len(parts) == len(domains) + 1
    lines = [f"[[nodes]]\n{d}\n{p}" for d, p in zip(domains, parts[1:], strict=True)]
    path.write_text(parts[0] + "".join(lines))


def test_files_without_domains_load_and_each_node_is_its_own(tmp_path: Path) -> None:
    cfg = init_cluster(tmp_path / "c", clients=1)
    assert "domain" not in (cfg.home / "cluster.toml").read_text()
    loaded = cfgmod.load(cfg.home / "cluster.toml")
    assert [s.domain for s in loaded.nodes] == [""] * 6
    assert [s.trust_domain for s in loaded.nodes] == [f"node{i}" for i in range(6)]
    assert len(build(nodes_of(loaded), 1, partitions=16).groups) == 1


def test_domains_round_trip_and_a_layout_refuses_two_of_one_domain(tmp_path: Path) -> None:
    cfg = init_cluster(tmp_path / "c", clients=1)
    path = cfg.home / "cluster.toml"
    _with_domains(path, [f'domain = "site-{i}"' for i in range(5)] + ['domain = "site-0"'])
    loaded = cfgmod.load(path)
    assert [s.trust_domain for s in loaded.nodes] == [f"site-{i}" for i in range(5)] + ["site-0"]
    cfgmod.save(loaded, path)
    assert cfgmod.load(path).nodes == loaded.nodes
    with pytest.raises(LayoutError, match="cannot make 1 groups of 6 nodes"):
        build(nodes_of(loaded), 1, partitions=16)


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ('domain = "rack a"', "may only use letters, digits, - _ . :"),
        ('domain = "' + "x" * 65 + '"', "must be at most 64 characters"),
        ("domain = 3", "domain must be a string"),
    ],
)
def test_a_bad_domain_is_refused_with_exit_3_naming_file_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, rule: str
) -> None:
    cfg = init_cluster(tmp_path / "c", clients=1)
    path = cfg.home / "cluster.toml"
    _with_domains(path, ["", "", line, "", "", ""])
    with pytest.raises(ConfigError, match=rule):
        cfgmod.load(path)
    capsys.readouterr()
    assert main(["client", "list", "--dir", str(cfg.home)]) == 3
    err = capsys.readouterr().err
    assert str(path) in err and rule in err
