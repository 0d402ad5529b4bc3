"""Telling systemd how a service is doing (``Type=notify`` units, ``sd_notify(3)``).

A node started by ``bftfs-node@.service`` says ``READY=1`` once it listens, so that units
ordered after it start when it can serve, and ``systemctl start`` reports a node that could
not bind its port as a failure instead of a success.  The protocol is one datagram to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names the abstract
namespace); without the variable (any start but systemd's) nothing is sent.

Written here rather than taken from a library: the protocol is these few lines, the
``systemd-python`` binding needs libsystemd's headers to build, and the small pure-Python
packages for it are unmaintained.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=..."`` lines) to the
    service manager; whether it was sent.  A failure is logged, never raised: the service
    runs the same without a manager that listens."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is neither a path nor abstract: not notified", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as e:
        log.warning("could not notify the service manager (%s): %s", address, e)
        return False
    return True
