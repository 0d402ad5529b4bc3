"""Fail a test that logs a WARNING or ERROR it did not declare (STYLE.md section 7).

The warnings a user would see are part of the behaviour: a test that provokes one by
accident (an exception swallowed into a log line, a retry that should not happen) must
fail, as in S3QL's test suite.  A handler on the root logger collects every record of
level WARNING or higher during each phase of a test (set-up, call, tear-down); after the
phase, any record not declared expected fails it, listing the records.

Two ways to declare a record expected, both narrow (a logger, a level, a message pattern):

- the marker ``@pytest.mark.expected_logs(logger, level="WARNING", match=None)``, which
  may be repeated: records it matches are *allowed* anywhere in the test, never required,
  for tests whose faults make the number of records depend on timing (a killed node, a
  Byzantine peer: how many requests reach it before the client stops asking);
- the fixture ``expect_log``: ``with expect_log(logger, level="WARNING", match=None,
  count=None):`` requires the records inside the block (exactly ``count``, or at least one
  when ``count`` is None), for a test whose action must log.

``logger`` is a logger name and matches that logger and its children (``"bftfs.node"``
matches ``"bftfs.node.qu_server"``); ``level`` matches that level only; ``match`` is a
regular expression searched in the formatted message.

Scope: only records logged in the pytest process are seen.  Node processes and mount
daemons that a test starts log to their own files (or stderr) and are out of scope here;
a test that calls ``bftfs.logsetup.setup_logging`` in-process replaces the root logger's
handlers, and the handler is re-attached at the start of each phase.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Expectation:
    """Which records are expected: a logger (with its children), one level, a pattern."""

    logger: str
    level: int
    match: re.Pattern[str] | None = None

    def covers(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not (name == self.logger or name.startswith(self.logger + ".")):
            return False
        if record.levelno != self.level:
            return False
        return self.match is None or self.match.search(record.getMessage()) is not None


def _expectation(
    logger: str, level: str | int = "WARNING", match: str | None = None
) -> Expectation:
    levelno = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(levelno, int) or levelno < logging.WARNING:
        raise ValueError(f"expected logs are WARNING or higher, not {level!r}")
    return Expectation(logger, levelno, re.compile(match) if match is not None else None)


class _Collector(logging.Handler):
    """Keeps the WARNING-or-higher records of the current test phase (any thread)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.declared: set[int] = set()  # ids of records an ``expect_log`` block consumed

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def reset(self) -> None:
        self.records = []
        self.declared = set()


_collector = _Collector()


def _attach() -> None:
    root = logging.getLogger()
    if _collector not in root.handlers:
        root.addHandler(_collector)


def _describe(record: logging.LogRecord) -> str:
    where = f"{record.pathname}:{record.lineno}"
    return f"{record.levelname} {record.name}: {record.getMessage()} ({where})"


def _marker_expectations(item: pytest.Item) -> list[Expectation]:
    return [_expectation(*m.args, **m.kwargs) for m in item.iter_markers("expected_logs")]


def _check_phase(item: pytest.Item) -> None:
    allowed = _marker_expectations(item)
    unexpected = [
        r
        for r in _collector.records
        if id(r) not in _collector.declared and not any(e.covers(r) for e in allowed)
    ]
    if unexpected:
        lines = "\n  ".join(_describe(r) for r in unexpected)
        raise AssertionError(
            f"unexpected log records (declare them with expected_logs/expect_log):\n  {lines}"
        )


def _start_phase() -> None:
    _attach()
    _collector.reset()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _start_phase()
    result = yield  # a phase that failed already raises out of this yield, unchecked
    _check_phase(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    _start_phase()
    result = yield
    _check_phase(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    _start_phase()
    result = yield
    _check_phase(item)
    return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expected_logs(logger, level='WARNING', match=None): records of that logger (and "
        "its children), at that level, whose message matches, are allowed (checklogs.py)",
    )


@contextmanager
def _expect(
    logger: str, level: str | int = "WARNING", match: str | None = None, count: int | None = None
) -> Iterator[None]:
    expectation = _expectation(logger, level, match)
    start = len(_collector.records)
    yield
    seen = [r for r in _collector.records[start:] if expectation.covers(r)]
    _collector.declared.update(id(r) for r in seen)
    wanted = "at least one" if count is None else str(count)
    if (count is None and not seen) or (count is not None and len(seen) != count):
        raise AssertionError(f"expected {wanted} {expectation}, saw {len(seen)}")


#: The type of the ``expect_log`` fixture, for a test's annotation.
ExpectLog = Callable[..., AbstractContextManager[None]]


@pytest.fixture
def expect_log() -> ExpectLog:
    """``with expect_log(logger, level, match=None, count=None):`` requires those records."""
    return _expect
