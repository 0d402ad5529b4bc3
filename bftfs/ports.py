"""Ports for local clusters and tests: which the OS reports free now, which lie outside
the range it gives outgoing connections, and the claims that keep two clusters created at
once apart (``local.cluster_ports`` chooses with them).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

#: The configuration's file name in a cluster directory (``local`` uses it too).
CONFIG_NAME = "cluster.toml"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the OS reports free right now (bound together, then released).

    These come from the ephemeral range, which any outgoing connection may take later: fine
    for a port used at once (a test's metrics), never for one written into a configuration
    (:func:`cluster_ports`)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: Where the OS hands out ports for outgoing connections when /proc does not say (Linux's
#: default ``net.ipv4.ip_local_port_range``).
DEFAULT_EPHEMERAL = (32768, 60999)
#: Local clusters' ports start here when the range below the ephemeral one allows: the
#: ports under 10000 hold most well-known services' (databases, web servers, ...).
PORT_FLOOR = 10000
#: A port claimed by a cluster being created counts as taken this long even before its
#: ``cluster.toml`` exists (``init_cluster`` writes the file right after choosing).
CLAIM_GRACE_SECONDS = 600.0


def ephemeral_range() -> tuple[int, int]:
    """The ports the OS gives outgoing connections (``/proc/sys/net/ipv4/ip_local_port_range``)."""
    try:
        lo, hi = (
            int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return lo, hi


def port_candidates() -> list[int]:
    """Ports a local cluster may use: outside the ephemeral range (no outgoing connection
    can be holding one when the node starts), unprivileged, from :data:`PORT_FLOOR` up
    where the room below the range allows, then above the range."""
    lo, hi = ephemeral_range()
    floor = PORT_FLOOR if lo - PORT_FLOOR >= 1000 else 1024
    return [*range(floor, lo), *range(hi + 1, 65536)]


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (plainly, without SO_REUSEADDR: a port still
    in TIME_WAIT counts as taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def claims_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"bftfs-ports-{os.getuid()}"


def claim_live(claim: Path, port: int) -> bool:
    """Whether the cluster that claimed ``port`` still holds it: the claim is recent, or
    its cluster's configuration still lists the port."""
    try:
        if time.time() - claim.stat().st_mtime < CLAIM_GRACE_SECONDS:
            return True
        config = Path(claim.read_text().strip()) / CONFIG_NAME
        return f':{port}"' in config.read_text()
    except OSError:
        return False
