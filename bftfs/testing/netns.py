"""Machines on one machine: network namespaces joined by a bridge, for tests of nodes on
several hosts (issue 21).

Each "host" is a network namespace with its own loopback and one address on a private
/24, reached from the root namespace (where the test and its mounts run) and from the other
hosts through a bridge.  :meth:`Hosts.cut` takes a host's link down, which is what a
pulled cable or a partitioned machine looks like to everyone else (connections hang, then
time out; nothing is refused), and :meth:`Hosts.restore` brings it back.

Needs root and ``ip`` (iproute2) with bridge and veth support; :func:`available` says
whether this machine has them, :func:`netem_available` whether ``tc`` can also impair a
link (:meth:`Hosts.impair`).  Everything made is removed on exit, even when the body
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

#: Run before a host's command.  ``ip netns exec`` gives the command its own mount namespace,
#: a copy of this machine's mounts (with private propagation, as here, a copy that does not
#: follow later unmounts), FUSE mounts included.  A copy keeps its mount's connection alive
#: after ``fusermount -u`` in the root namespace: the mount daemon is never told, and an
#: unmount waiting for it waits until the host's process ends.  Another machine holds none
#: of this one's mounts, so the copies are detached in the host's namespace.
WITHOUT_FUSE_MOUNTS = (
    "awk '$3 ~ /^fuse(\\.|$)/ {print $2}' /proc/self/mounts"
    ' | while read -r m; do umount -l "$m"; done; exec "$@"'
)


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


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], capture_output=True, text=True, check=True, timeout=30)


def _below(fraction: float) -> str:
    """A classic BPF program (tc's ``bytecode``) that matches a packet with probability
    ``fraction``: ``ld rand`` (the ancillary load SKF_AD_RANDOM, -4096 + 56), ``jge T``
    past the match, ``ret -1`` (match), ``ret 0``."""
    threshold = min(2**32 - 1, int(fraction * 2**32))
    return f"4,32 0 0 {2**32 - 4096 + 56},53 1 0 {threshold},6 0 0 {2**32 - 1},6 0 0 0,"


def netem_available() -> bool:
    """Whether :func:`available` holds and ``tc`` can put a netem qdisc on a veth."""
    if not available() or shutil.which("tc") is None:
        return False
    tag = f"bfq{os.getpid() % 100000}"
    try:
        if _ip(
            "link", "add", tag, "type", "veth", "peer", "name", tag + "p", check=False
        ).returncode:
            return False
        try:
            r = subprocess.run(
                ["tc", "qdisc", "add", "dev", tag, "root", "netem", "delay", "1ms"],
                capture_output=True,
                timeout=30,
            )
            return r.returncode == 0
        finally:
            _ip("link", "del", tag, check=False)
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

    def ends(self, i: int) -> tuple[str, str]:
        """Host ``i``'s cable: its root-namespace end and its end inside the host."""
        return self._link(i), f"bfp{self.tag}{i}"

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
        """``cmd`` as run on host ``i``, without this machine's FUSE mounts
        (:data:`WITHOUT_FUSE_MOUNTS`)."""
        return ["ip", "netns", "exec", self.name(i), "sh", "-c", WITHOUT_FUSE_MOUNTS, "sh", *cmd]

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

    def impair(self, i: int, *, loss: float, duplicate: float, reorder: float = 0.0) -> str:
        """Both directions of host ``i``'s cable lose a fraction ``loss`` of the packets
        and send a fraction ``duplicate`` twice (and, with netem, reorder ``reorder`` of
        them behind a 10 ms delay); which packets is the kernel's random choice, not
        reproducible.  The root-namespace end impairs what goes to the host, the host's
        end what leaves it (to the root namespace and to the other hosts).

        With tc's netem (:func:`netem_available`) the qdisc does it all.  A kernel without
        netem (``CONFIG_NET_SCH_NETEM`` unset) gets loss and duplication from a clsact
        qdisc's egress filters: a classic BPF program that matches when the kernel's random
        number (``ld rand``) falls below the fraction, and a mirred action that redirects
        the packet to a sink (a veth whose peer is down: lost) or mirrors it to the same
        cable (sent twice); no reordering then.  Returns which: ``"netem"`` or ``"bpf"``.
        """
        ends = [([], self._link(i)), (["-n", self.name(i)], f"bfp{self.tag}{i}")]
        if netem_available():
            spec = ["loss", f"{loss:.2%}", "duplicate", f"{duplicate:.2%}"]
            if reorder:
                spec += ["delay", "10ms", "reorder", f"{1 - reorder:.2%}", "50%"]
            for ns, dev in ends:
                _tc(*ns, "qdisc", "replace", "dev", dev, "root", "netem", *spec)
            return "netem"
        for ns, dev in ends:
            sink = f"bfk{self.tag}{i}{'n' if ns else 'r'}"
            _ip(*ns, "link", "add", sink, "type", "veth", "peer", "name", sink + "p")
            if not ns:
                self._made.append(("link", "del", sink))
            _ip(*ns, "link", "set", sink, "up")  # its peer stays down: a sink
            _tc(*ns, "qdisc", "add", "dev", dev, "clsact")
            for pref, fraction, action in (
                (1, loss, ["redirect", "dev", sink]),
                (2, duplicate, ["mirror", "dev", dev]),
            ):
                if fraction > 0:
                    _tc(
                        *ns,
                        "filter",
                        "add",
                        "dev",
                        dev,
                        "egress",
                        "pref",
                        str(pref),
                        "bpf",
                        "bytecode",
                        _below(fraction),
                        "action",
                        "mirred",
                        "egress",
                        *action,
                    )
        return "bpf"

    def impaired(self, i: int) -> dict[str, int]:
        """Packets host ``i``'s cable dropped and sent twice so far, both directions
        (``bpf`` impairment only; ``{}`` otherwise): the test's evidence that it did."""
        out: dict[str, int] = {}
        for ns, dev in ([], self._link(i)), (["-n", self.name(i)], f"bfp{self.tag}{i}"):
            r = subprocess.run(
                ["tc", *ns, "-s", "filter", "show", "dev", dev, "egress"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            kind = None
            for line in r.stdout.splitlines():
                if "Egress Redirect" in line:
                    kind = "lost"
                elif "Egress Mirror" in line:
                    kind = "duplicated"
                elif kind and line.strip().startswith("Sent"):
                    out[kind] = out.get(kind, 0) + int(line.split()[3])
                    kind = None
        return out


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
    """Stop the processes a test spawned on its hosts: all are asked (SIGTERM) first, so
    they shut down side by side, then each is waited for, killed past ``grace`` seconds."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
