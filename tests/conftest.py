"""Shared pytest configuration.

Tests are tiered by file name (STYLE.md section 7): ``t1_`` pure cores, ``t2_`` store and
transport, ``t3_`` file-system operations without a kernel, ``t4_`` real mounts, ``t5_``
cluster faults.  Files are collected by the ``python_files`` pattern in pyproject.toml.

Async tests: write ``async def test_x(tmp_path): ...`` and the hook below runs it under
``trio.run`` with its fixtures as keyword arguments; there is no ``def main(): ...;
trio.run(main)`` wrapper to write.  Each test gets its own event loop, so fixtures are
synchronous values (``tmp_path``, parameters); something async that a test needs (a
cluster, a client) is opened inside it with ``async with``.  A test that wants a
``MockClock`` or another ``trio.run`` option still calls ``trio.run`` itself.  This is a few
lines instead of pytest-trio, which is unmaintained (last release 2022).
"""

from __future__ import annotations

import functools
import inspect
import os

import pytest
import trio
from hypothesis import HealthCheck, settings

# An unexpected WARNING or ERROR log record fails the test (tests/checklogs.py).
pytest_plugins = ("checklogs",)

# Deterministic property tests: derandomized, with no deadline (2 noisy cores).
settings.register_profile(
    "bftfs", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bftfs"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test under ``trio.run``; leave every other test to pytest."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    trio.run(functools.partial(test, **{name: pyfuncitem.funcargs[name] for name in names}))
    return True
