"""``--client-cpu`` (benchmarks/cpus.py): the correct client on a CPU of its own, every
server and the Byzantine client on the others, placed thread by thread on real processes."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import cpus  # noqa: E402
import variants  # noqa: E402

#: A process with three threads that waits for its stdin to close.
THREADED = (
    "import sys, threading\n"
    "ts = [threading.Thread(target=sys.stdin.read) for _ in range(2)]\n"
    "[t.start() for t in ts]\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)

needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU here")


def _affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")]


@pytest.fixture
def own_affinity() -> Iterator[None]:
    """The test process is placed too: give its threads their CPUs back afterwards."""
    before = {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
    try:
        yield
    finally:
        for tid, cpus_of in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus_of)


@pytest.fixture
def threaded() -> Iterator[list[subprocess.Popen[str]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", THREADED],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        yield procs
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(10)
            if p.stdout is not None:
                p.stdout.close()


@needs_two
def test_servers_go_to_the_other_cpus_and_the_client_side_stays_on_the_first(
    own_affinity: None, threaded: list[subprocess.Popen[str]]
) -> None:
    client, servers = cpus.split()
    assert len(client) == 1 and servers and not client & servers
    node, mount = threaded
    site = SimpleNamespace(pids={"node0": node.pid, "mount": mount.pid})
    placed = cpus.place_site(site)
    assert placed["node0"] == placed["mount"] == 3  # every thread, not the main one alone
    assert all(a == servers for a in _affinities(node.pid))
    assert all(a == client for a in _affinities(mount.pid))
    assert os.sched_getaffinity(0) == client  # the benchmark: its workload inherits it
    # Placed again (the next target of the run), the split is the same: it is taken from
    # the CPUs the process had at its start, not from the one it now runs on.
    assert cpus.split() == (client, servers)


@needs_two
def test_the_byzantine_client_places_itself_with_the_servers_before_it_starts_anything() -> None:
    _, servers = cpus.split()
    code = (
        f"import os, sys; sys.path.insert(0, {str(BENCH)!r}); import cpus\n"
        "print(cpus.place_self_with_servers(), sorted(os.sched_getaffinity(0)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cpus.server_env(), capture_output=True, text=True
    )
    assert out.stdout.split(maxsplit=1) == ["True", f"{sorted(servers)}\n"]
    plain = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != cpus.SERVER_CPUS_ENV},
    )
    assert plain.stdout.startswith("False")


def test_one_cpu_is_refused_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "_USABLE", [0])
    with pytest.raises(SystemExit, match="at least two CPUs"):
        cpus.split()


def test_the_flag_is_offered_and_recorded_with_the_run() -> None:
    ap = argparse.ArgumentParser()
    variants.add_arguments(ap, attacks=True)
    args = ap.parse_args(["--client-cpu", "--attack", "client"])
    assert variants.config(args)["client_cpu"] is True
    assert variants.config(ap.parse_args([]))["client_cpu"] is False


@needs_two
def test_the_cpu_hog_loads_every_cpu_even_when_the_benchmark_is_placed(own_affinity: None) -> None:
    client, _ = cpus.split()
    cpus.place(os.getpid(), client)
    with variants.CpuHog(2) as hog:
        for p in hog.procs:
            assert all(a == cpus.usable() for a in _affinities(p.pid))
