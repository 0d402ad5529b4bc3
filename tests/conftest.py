"""Shared pytest configuration.

Tests are tiered by file name (STYLE.md section 7): ``t1_`` pure cores, ``t2_`` store and
transport, ``t3_`` file-system operations without a kernel, ``t4_`` real mounts, ``t5_``
cluster faults.  Async tests run under ``trio.run`` through the ``run`` helper (pytest-trio
is unmaintained, and a plain ``trio.run`` keeps each test's event loop explicit).
Files are collected by the ``python_files`` pattern in pyproject.toml.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Deterministic property tests: derandomized, with no deadline (2 noisy cores).
settings.register_profile(
    "bftfs", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bftfs"))
