"""``bftfs unit node|mount|snapshot|snapshot-timer``: print a systemd unit shipped with the
package, for an operator to put in ``/etc/systemd/system/`` on a node's or a client's
machine (``bftfs/systemd/``: a hardened ``Type=notify`` node unit, a mount unit, and the
service and hourly timer of scheduled snapshots, ``bftfs snapshot auto``)."""

from __future__ import annotations

import argparse
from importlib import resources
from typing import Any

#: The unit each name prints, and the file name it is installed under.
UNITS = {
    "node": "bftfs-node@.service",
    "mount": "mnt-bftfs.mount",
    "snapshot": "bftfs-snapshot.service",
    "snapshot-timer": "bftfs-snapshot.timer",
}


def unit_text(name: str) -> str:
    """The text of the shipped unit ``name`` (a key of :data:`UNITS`)."""
    return resources.files("bftfs").joinpath("systemd", UNITS[name]).read_text()


def add_unit(sub: Any) -> None:
    """``bftfs unit``."""
    sp = sub.add_parser(
        "unit",
        help="print a systemd unit: node (bftfs-node@.service), mount (mnt-bftfs.mount), "
        "snapshot and snapshot-timer (scheduled snapshots, hourly)",
    )
    sp.add_argument("which", choices=sorted(UNITS), help="which unit")
    sp.set_defaults(func=cmd_unit)


def cmd_unit(args: argparse.Namespace) -> int:
    print(unit_text(args.which), end="")
    return 0
