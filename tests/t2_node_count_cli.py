"""``bftfs node add`` and ``bftfs node remove`` (issue 35; docs/guide.md, "Changing the
number of nodes or the thresholds"): each issues a new generation of one node more or one
fewer at the cluster's ``t`` and ``b``, refuses a size the thresholds do not allow (naming
the rule), and refuses to start a second change while a move runs.  ``--offline`` issues
the view without pushing it, so no node process is needed to check what was issued."""

from __future__ import annotations

from pathlib import Path

from bftfs import config as cfgmod
from bftfs import local
from bftfs.membership import admin
from bftfs.testing.clis import bftfs_cli


def test_node_add_and_remove_issue_generations_and_refuse_what_the_rules_forbid(
    tmp_path: Path,
) -> None:
    home = tmp_path / "cluster"
    local.init_cluster(home, t=1, b=1, n=7, map_size=1 << 24)

    added = bftfs_cli(home, "node", "add", "--offline")
    assert "generation 2 of 8 nodes, t=1 b=1" in added.stdout, added.stdout
    cfg = cfgmod.load(home / "cluster.toml")
    view, _ = admin.current(cfg)
    assert (view.generation, len(view.nodes), cfg.t, cfg.b) == (2, 8, 1, 1)
    assert view.previous is not None and len(view.previous.nodes) == 7
    # A second change waits for the move to finish.
    again = bftfs_cli(home, "node", "remove", "--offline", check=False)
    assert again.returncode == 2 and "finish that move first" in again.stderr, again.stderr

    # From six nodes with t = b = 1, one fewer breaks Q/U's rule: refused, named, nothing
    # issued.
    small = tmp_path / "small"
    local.init_cluster(small, t=1, b=1, n=6, map_size=1 << 24)
    before = (small / "cluster.toml").read_bytes()
    refused = bftfs_cli(small, "node", "remove", "--offline", check=False)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "refused" in refused.stderr and "n >= 3t + 2b + 1" in refused.stderr, refused.stderr
    assert (small / "cluster.toml").read_bytes() == before
    # The shorthand takes no node id and no addresses: each node of a generation is new.
    with_id = bftfs_cli(small, "node", "remove", "3", "--offline", check=False)
    assert with_id.returncode == 2 and "takes no node id" in with_id.stderr
    with_address = bftfs_cli(
        small, "node", "add", "--address", "10.0.0.9:7000", "--offline", check=False
    )
    assert with_address.returncode == 2 and "generation new --nodes N" in with_address.stderr
