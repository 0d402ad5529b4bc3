"""Tier 1: ``bftfs.sdnotify``, the ``sd_notify(3)`` datagram, to a socket bound here (a path
and an abstract name), and nothing without ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bftfs.sdnotify import notify


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_the_state_reaches_a_socket_named_by_path_or_abstract_name(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _bound(path) as sock:
        assert notify("READY=1\nSTATUS=up", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    name = f"bftfs-test-{os.getpid()}"
    with _bound("\0" + name) as sock:
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


@pytest.mark.expected_logs("bftfs.sdnotify")
def test_nothing_is_sent_without_a_manager_and_a_dead_one_is_only_logged(
    tmp_path: Path,
) -> None:
    assert not notify("READY=1", environ={})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": "relative/path"})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")})
