"""The Grafana dashboard in ``docs/`` asks only for series bftfs exports (issue 67): a
renamed metric must not leave a panel that quietly shows nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "docs" / "grafana-bftfs.json"
#: Suffixes Prometheus adds to a family's name in its samples.
SAMPLE_SUFFIXES = ("_bucket", "_count", "_sum")


def exported(name: str, sources: list[str]) -> bool:
    """Whether a module names family ``name``: as a literal, or as an f-string prefix
    (``f"bftfs_node_{key}"``) whose remainder is a quoted key in the same module."""
    for text in sources:
        if f'"{name}"' in text:
            return True
        for prefix in re.findall(r'f"(bftfs_[a-z_]*)\{', text):
            if name.startswith(prefix) and f'"{name[len(prefix) :]}"' in text:
                return True
    return False


def test_every_series_a_panel_asks_for_is_exported() -> None:
    doc = json.loads(DASHBOARD.read_text())
    sources = [p.read_text() for p in (REPO / "bftfs").rglob("*.py")]
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\bbftfs_[a-z_]+", expr):
            family = name
            for suffix in SAMPLE_SUFFIXES:
                if family.endswith(suffix) and not exported(family, sources):
                    family = family[: -len(suffix)]
            assert exported(family, sources), f"{name} (in {expr!r}) is exported by nothing"


def test_a_renamed_series_is_caught() -> None:
    assert not exported("bftfs_node_requests_gone", ['Family("bftfs_node_requests")'])
    assert exported("bftfs_node_backlog_versions", ['f"bftfs_node_{key}" "backlog_versions"'])
