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

import contextlib
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
    call = functools.partial(test, **{name: pyfuncitem.funcargs[name] for name in names})
    limit = _trio_limit(pyfuncitem)

    async def bounded() -> None:
        with trio.fail_after(limit) if limit is not None else contextlib.nullcontext():
            await call()

    trio.run(bounded)
    return True


def _trio_limit(item: pytest.Function) -> float | None:
    """Seconds an async test may run inside trio: nine tenths of pytest-timeout's limit
    for it (its ``timeout`` marker, ``--timeout``, the ini's), None without one.  A hang
    then fails in trio, which closes the test's nurseries and the clusters they hold;
    pytest-timeout's signal left the hung run behind, and the xdist worker's next test
    failed with trio's "run() inside run()" (the slow suite, t2_rw_idle's hang)."""
    marker = item.get_closest_marker("timeout")
    raw = marker.args[0] if marker is not None and marker.args else None
    if raw is None:
        raw = item.config.getoption("timeout", None)
    if raw is None:
        raw = item.config.getini("timeout")
    try:
        limit = float(raw)
    except (TypeError, ValueError):
        return None
    return 0.9 * limit if limit > 0 else None
