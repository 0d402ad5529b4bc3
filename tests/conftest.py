"""Shared pytest configuration.

Tests are tiered by file name (STYLE.md section 7): ``t1_`` pure cores, ``t2_`` store and
transport, ``t3_`` file-system operations without a kernel, ``t4_`` real mounts, ``t5_``
cluster faults.  Async tests run under ``trio.run`` through the ``run`` helper (pytest-trio
is unmaintained, and a plain ``trio.run`` keeps each test's event loop explicit).
Files are collected by the ``python_files`` pattern in pyproject.toml.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Deterministic property tests: derandomized, with no deadline (2 noisy cores).
settings.register_profile(
    "bftfs", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bftfs"))


def pytest_configure(config: object) -> None:
    """Refuse to test stale compiled modules: a module compiled by mypyc (setup.py) shadows
    its source, so after an edit the tests would run the old code.  ``make test`` rebuilds
    first (scripts/setup.sh); a bare ``pytest`` after an edit stops here instead."""
    root = Path(__file__).resolve().parent.parent
    stale = [
        str(src.relative_to(root))
        for so in (root / "bftfs").rglob("*.so")
        if (src := so.parent / (so.name.split(".", 1)[0] + ".py")).exists()
        and src.stat().st_mtime > so.stat().st_mtime
    ]
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(stale)}; "
            "rebuild with scripts/setup.sh (make test does)"
        )
