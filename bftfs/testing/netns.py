"""Machines on one machine: network namespaces joined by a bridge, for tests of nodes on
several hosts (issue 21).

Each "host" is a network namespace with its own loopback and one address on a private
/24, reached from the root namespace (where the test and its mounts run) and from the other
hosts through a bridge.  :meth:`Hosts.cut` takes a host's link down, which is what a
pulled cable or a partitioned machine looks like to everyone else (connections hang, then
time out; nothing is refused), and :meth:`Hosts.restore` brings it back.

Needs root and ``ip`` (iproute2) with bridge and veth support; :func:`available` says
whether this machine has them.  Everything made is removed on exit, even when the body
failed; names carry a random tag so that concurrent runs do not meet.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def available() -> bool:
    """Whether namespaces, veth pairs and bridges can be made here (root, iproute2)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    tag = f"bfp{os.getpid() % 100000}"
    try:
        made = _ip("link", "add", tag, "type", "bridge", check=False).returncode == 0
        if made:
            _ip("link", "del", tag, check=False)
        ns = _ip("netns", "add", tag, check=False).returncode == 0
        if ns:
            _ip("netns", "del", tag, check=False)
        return made and ns
    except (OSError, subprocess.TimeoutExpired):
        return False


def _free_subnet(rng: random.Random) -> str:
    """A ``10.a.b`` /24 prefix no interface here uses."""
    used = _ip("-o", "-4", "addr").stdout
    while True:
        prefix = f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 256)}"
        if f" {prefix}." not in used:
            return prefix


class Hosts:
    """``count`` network namespaces on a bridge; host ``i`` has address :meth:`address`."""

    def __init__(self, count: int, *, seed: int | None = None) -> None:
        rng = random.Random(seed if seed is not None else os.getpid())
        self.count = count
        self.tag = f"{rng.randrange(16**4):04x}"
        self.prefix = _free_subnet(rng)
        self.bridge = f"bfb{self.tag}"
        self._made: list[tuple[str, ...]] = []  # what to delete, newest last

    def name(self, i: int) -> str:
        """Host ``i``'s namespace (``ip netns exec NAME ...`` runs a command there)."""
        return f"bfh{self.tag}{i}"

    def _link(self, i: int) -> str:
        """The root-namespace end of host ``i``'s cable."""
        return f"bfl{self.tag}{i}"

    def address(self, i: int) -> str:
        return f"{self.prefix}.{10 + i}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (where mounts and tests run)."""
        return f"{self.prefix}.1"

    def __enter__(self) -> Hosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", "del", self.bridge))
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(self.count):
                ns, link, peer = self.name(i), self._link(i), f"bfp{self.tag}{i}"
                _ip("netns", "add", ns)
                self._made.append(("netns", "del", ns))
                _ip("link", "add", link, "type", "veth", "peer", "name", peer)
                self._made.append(("link", "del", link))
                _ip("link", "set", peer, "netns", ns)
                _ip("link", "set", link, "master", self.bridge)
                _ip("link", "set", link, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", peer)
                _ip("-n", ns, "link", "set", peer, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything made, newest first (namespaces take their ends of the veths)."""
        while self._made:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _ip(*self._made.pop(), check=False)

    def command(self, i: int, cmd: list[str]) -> list[str]:
        """``cmd`` as run on host ``i``."""
        return ["ip", "netns", "exec", self.name(i), *cmd]

    def spawn(self, i: int, cmd: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` on host ``i`` in the background, output appended to ``log``."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.command(i, cmd), stdout=out, stderr=subprocess.STDOUT, **kwargs
            )

    def cut(self, i: int) -> None:
        """Host ``i`` drops off the network (its link goes down; it keeps running)."""
        _ip("link", "set", self._link(i), "down")

    def restore(self, i: int) -> None:
        """Host ``i``'s link comes back."""
        _ip("link", "set", self._link(i), "up")
