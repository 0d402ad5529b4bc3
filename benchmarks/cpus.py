"""The correct client on a CPU of its own, the servers on the others (``--client-cpu``).

On one two-core machine every process of a run shares both cores: the correct client's FUSE
daemon and workload, the six node processes, and, under attack, the Byzantine client.
What the nodes spend serving an attacker is then taken from the correct client's own CPU,
which on a network it does not share (issue 64: "figures while a node and a client
actively misbehave").  With ``--client-cpu`` a run keeps the two apart, as two machines
would: the benchmark process, everything it starts for the workload and every client-side
FUSE daemon (``site.pids["mount"]``, bindfs's) on the first CPU; every server process
(``site.pids["node..."]``: bftfs nodes, GlusterFS bricks, chunk and volume servers) and
the Byzantine client (``attack.byzantine_client``) on the others.  Every target of the run
is placed alike, twins included, so attacked / healthy compares one layout (a ``--load
cpu`` hog still loads every CPU: it stands for the machine being busy); the figures
of a run without the flag (everything on both cores) stay the ones the machine gives a
user, and are reported beside.

Affinity is per thread on Linux: a process is placed by every thread it has
(``/proc/PID/task``); threads it makes later inherit their creator's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

#: The environment variable that hands the servers' CPUs to a process the benchmark starts
#: (the Byzantine client, which places itself before its mount daemon starts).
SERVER_CPUS_ENV = "BFTFS_BENCH_SERVER_CPUS"


#: The CPUs this process could use when it started, before ``place_site`` placed it.
_USABLE = sorted(os.sched_getaffinity(0))


def usable() -> set[int]:
    """Every CPU this process could use at its start: where a load that stands for the
    whole machine (``variants.CpuHog``) runs, however the benchmark placed itself."""
    return set(_USABLE)


def split() -> tuple[set[int], set[int]]:
    """(the client's CPU, the servers' CPUs); a clear error on a machine with one."""
    if len(_USABLE) < 2:
        raise SystemExit("--client-cpu needs at least two CPUs")
    return {_USABLE[0]}, set(_USABLE[1:])


def for_each_thread(pid: int, act: Callable[[int], object]) -> int:
    """``act(tid)`` for every thread of ``pid`` (Linux keeps affinity and nice values per
    thread; threads made later inherit their creator's); how many it was done for (a
    thread gone meanwhile is skipped; a process gone is an error: the run would be
    labelled with a placement or priority it did not have)."""
    done = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            act(int(tid))
            done += 1
    return done


def place(pid: int, cpus: set[int]) -> int:
    """Put every thread of ``pid`` on ``cpus``; how many threads were placed."""
    return for_each_thread(pid, lambda tid: os.sched_setaffinity(tid, cpus))


def place_site(site: Any) -> dict[str, Any]:
    """Place this benchmark (its future children inherit it), ``site``'s servers and its
    client-side daemons (module docstring); what was placed where, for ``site.info``."""
    client, servers = split()
    place(os.getpid(), client)
    placed: dict[str, Any] = {"client": sorted(client), "servers": sorted(servers)}
    for name, pid in site.pids.items():
        side = servers if name.startswith("node") else client
        placed[name] = place(pid, side)
    return placed


def server_env() -> dict[str, str]:
    """The environment of a process to run with the servers (the Byzantine client)."""
    _, servers = split()
    return {**os.environ, SERVER_CPUS_ENV: ",".join(str(c) for c in sorted(servers))}


def place_self_with_servers() -> bool:
    """In a process started with ``server_env``: move it to the servers' CPUs (before it
    starts anything, so its children follow).  Whether it was asked to."""
    value = os.environ.get(SERVER_CPUS_ENV)
    if not value:
        return False
    place(os.getpid(), {int(c) for c in value.split(",")})
    return True
