"""The log-checking plugin (``tests/checklogs.py``), run on a generated test file.

A separate pytest process runs the file below with only the plugin loaded, and each test's
outcome is read from its summary: an unexpected WARNING or ERROR fails the phase that logged
it (call, or a fixture's tear-down), and the two ways of declaring one are narrow (logger,
level and message).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SAMPLE = r"""
import logging
import threading

import pytest

log = logging.getLogger("bftfs.demo")


@pytest.fixture
def noisy():
    yield
    log.warning("left behind in tear-down")


def test_unexpected_warning_fails():
    log.warning("boom")


def test_info_passes():
    log.info("fine")


def test_a_thread_s_warning_fails():
    t = threading.Thread(target=lambda: log.error("from a thread"))
    t.start()
    t.join()


@pytest.mark.expected_logs("bftfs.demo", "WARNING", match=r"node \d+ down")
def test_marked_warning_passes():
    log.warning("node 3 down")
    log.warning("node 4 down")


@pytest.mark.expected_logs("bftfs.demo", "WARNING", match=r"node \d+ down")
def test_marker_covers_only_its_message():
    log.warning("disk full")


@pytest.mark.expected_logs("bftfs.demo", "WARNING")
def test_marker_covers_only_its_level():
    log.error("node 3 down")


@pytest.mark.expected_logs("bftfs.demo.child", "WARNING")
def test_marker_covers_only_its_logger_and_children():
    log.warning("from the parent")


@pytest.mark.expected_logs("bftfs.demo", "WARNING", match="optional")
def test_marker_does_not_require_the_record():
    pass


def test_expect_log_consumes_its_records(expect_log):
    with expect_log("bftfs", "ERROR", match="refused", count=2):
        logging.getLogger("bftfs.x.y").error("request refused")
        logging.getLogger("bftfs.x").error("refused again")


def test_expect_log_requires_its_records(expect_log):
    with expect_log("bftfs.demo", "WARNING"):
        pass


def test_expect_log_does_not_cover_records_outside_its_block(expect_log):
    with expect_log("bftfs.demo", "WARNING"):
        log.warning("inside")
    log.warning("outside")


def test_a_fixture_s_tear_down_warning_fails(noisy):
    pass


def test_replacing_the_root_handlers():
    logging.getLogger().handlers.clear()


def test_the_handler_is_back_after_that():
    log.warning("still seen")
"""

EXPECTED = {
    "test_unexpected_warning_fails": "FAILED",
    "test_info_passes": "PASSED",
    "test_a_thread_s_warning_fails": "FAILED",
    "test_marked_warning_passes": "PASSED",
    "test_marker_covers_only_its_message": "FAILED",
    "test_marker_covers_only_its_level": "FAILED",
    "test_marker_covers_only_its_logger_and_children": "FAILED",
    "test_marker_does_not_require_the_record": "PASSED",
    "test_expect_log_consumes_its_records": "PASSED",
    "test_expect_log_requires_its_records": "FAILED",
    "test_expect_log_does_not_cover_records_outside_its_block": "FAILED",
    "test_a_fixture_s_tear_down_warning_fails": "ERROR",
    "test_replacing_the_root_handlers": "PASSED",
    "test_the_handler_is_back_after_that": "FAILED",
}


def test_the_plugin_fails_exactly_the_undeclared_records(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "checklogs", "-p", "no:cacheprovider", "-rA"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes: dict[str, str] = {}
    for line in run.stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("PASSED", "FAILED", "ERROR") and rest.startswith("test_sample.py::"):
            name = rest.removeprefix("test_sample.py::").split(" ")[0]
            if status == "ERROR" or name not in outcomes:
                outcomes[name] = status
    assert outcomes == EXPECTED, run.stdout[-4000:]
    assert "unexpected log records" in run.stdout
    assert "WARNING bftfs.demo: boom" in run.stdout
