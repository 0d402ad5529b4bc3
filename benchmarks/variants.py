"""Aged and loaded variants of the side-by-side benchmarks' targets (issue 62).

``--aged`` adds, after each bftfs target with every node sound, the same target run on a
cluster that first went through the ageing workload (``ageing.age``: Andrew rounds, a big
file and a tree of small files made and removed), measured right after it, while the
nodes still verify and collect.  ``--load cpu`` adds, after each target, the same target
run beside one busy process per core (started after the set-up, stopped after the run);
``--load nice-node`` the same target with one server reniced to 19 (a bftfs node, or a
GlusterFS brick, every thread of it; targets without servers get no such twin).  Each
variant is a target of its own, interleaved with the others, so its figure over its
twin's (aged / fresh, loaded / quiet) is a ratio of medians taken in the same run.
``--attack`` adds each bftfs target with one Byzantine node or a Byzantine client beside
it (``attack.py``: attacked / healthy).  ``--client-cpu`` runs every target of the run with
the correct client on a CPU of its own and the servers on the others (``cpus.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import attack
import common
import cpus
from common import Progress, Site, TargetSpec

LOADS = ("cpu", "nice-node")
NICE = 19


def add_arguments(ap: argparse.ArgumentParser, attacks: bool = False) -> None:
    """The variants' flags, the same in every benchmark that offers them; ``attacks``:
    ``--attack`` too (PostMark and seqio, the workloads issue 64's bar names)."""
    ap.add_argument(
        "--aged",
        action="store_true",
        help="also run each bftfs target after the ageing workload (benchmarks/ageing.py), "
        "right after it, interleaved with the fresh one",
    )
    ap.add_argument(
        "--load",
        choices=LOADS,
        help="also run each target loaded: cpu = one busy process per core beside the run; "
        "nice-node = one bftfs node or GlusterFS brick reniced to 19",
    )
    if attacks:
        ap.add_argument(
            "--attack",
            help="also run each bftfs target under attack, interleaved with it: a "
            "comma-separated list of node profiles (`bftfs node --byzantine`, on node 0) and "
            "'client' (a Byzantine client beside the correct one), or 'all' (attack.py)",
        )
    ap.add_argument(
        "--client-cpu",
        action="store_true",
        help="every target with the correct client (this benchmark, its workload, its FUSE "
        "daemon) on the first CPU and every server and the Byzantine client on the others, "
        "as on a network (cpus.py)",
    )
    ap.add_argument(
        "--age-big-mib", type=int, default=1024, help="ageing: the big file's MiB (1024)"
    )
    ap.add_argument(
        "--age-small-files", type=int, default=3000, help="ageing: small files made (3000)"
    )
    ap.add_argument("--age-andrew-rounds", type=int, default=3, help="ageing: Andrew rounds (3)")


def name_of(base: str, aged: bool, load: str) -> str:
    """A variant's target name: the base's, ``aged`` and the load after it."""
    return base + (" aged" if aged else "") + (f" +{load}" if load else "")


def base_name(spec: TargetSpec) -> str:
    """The name ``spec`` had before ``expand`` made it a variant."""
    name = spec.name
    if spec.attack:
        return name.removesuffix(attack.suffix(spec.attack))
    if spec.load:
        name = name.removesuffix(f" +{spec.load}")
    if spec.aged:
        name = name.removesuffix(" aged")
    return name


def expand(
    specs: Sequence[TargetSpec], aged: bool, load: str | None, attacks: Sequence[str] = ()
) -> list[TargetSpec]:
    """The targets with their variants, each right after its twin."""
    out: list[TargetSpec] = []
    for spec in specs:
        group = [spec]
        sound = spec.kind == "bftfs" and not (spec.down or spec.corrupt)
        if aged and sound:
            group.append(replace(spec, name=name_of(spec.name, True, ""), aged=True))
        if sound:
            group += [replace(spec, name=spec.name + attack.suffix(a), attack=a) for a in attacks]
        if load:
            group += [
                replace(s, name=name_of(s.name, False, load), load=load)
                for s in list(group)
                if load == "cpu" or s.kind in ("bftfs", "glusterfs")
            ]
        out += group
    return out


def expand_args(specs: Sequence[TargetSpec], args: argparse.Namespace) -> list[TargetSpec]:
    """``expand`` with the variants ``args`` asks for."""
    attacks = attack.attacks_from(getattr(args, "attack", None))
    return expand(specs, args.aged, args.load, attacks)


def twin_of(spec: TargetSpec) -> tuple[str, str] | None:
    """The twin a variant is compared with and what the ratio means, or None for a
    plain target: a loaded one against the same quiet, an aged one against the fresh, an
    attacked one against the healthy."""
    if spec.attack:
        return base_name(spec), "attacked / healthy"
    if spec.load:
        return name_of(base_name(spec), spec.aged, ""), "loaded / quiet"
    if spec.aged:
        return base_name(spec), "aged / fresh"
    return None


def twins(specs: Sequence[TargetSpec]) -> dict[str, list[str]]:
    """Per variant: its twin's name and what their ratio means (kept in the results)."""
    return {s.name: list(t) for s in specs if (t := twin_of(s)) is not None}


def ratios(
    pairs: dict[str, list[str]], figure: dict[str, float | None]
) -> dict[str, tuple[str, float | None]]:
    """Per variant of ``pairs`` (``twins``): what its ratio means, and its figure over
    its twin's."""
    return {
        name: (what, common.ratio(figure.get(name), figure.get(twin)))
        for name, (twin, what) in pairs.items()
    }


# Conditions -------------------------------------------------------------------------------


class CpuHog:
    """One busy process per core (``with CpuHog():``), stopped and reaped on exit."""

    def __init__(self, processes: int | None = None) -> None:
        self.n = processes or os.cpu_count() or 1
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CpuHog:
        for _ in range(self.n):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], close_fds=True)
            self.procs.append(hog)
            cpus.place(hog.pid, cpus.usable())  # the whole machine, also under --client-cpu
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()


def first_server(pids: dict[str, int]) -> tuple[str, int] | None:
    """The server a ``nice-node`` load renices: the lowest-numbered ``node<i>``."""
    nodes = sorted(
        (int(m.group(1)), k, v) for k, v in pids.items() if (m := re.fullmatch(r"node(\d+)", k))
    )
    return (nodes[0][1], nodes[0][2]) if nodes else None


def renice(pid: int, nice: int = NICE) -> int:
    """Renice every thread of ``pid`` (Linux keeps a nice value per thread); threads
    made later inherit it from their creator.  How many threads were reniced."""
    return cpus.for_each_thread(pid, lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice))


@contextlib.contextmanager
def conditions(
    spec: TargetSpec, site: Site, args: argparse.Namespace, progress: Progress
) -> Iterator[None]:
    """Age ``site`` if ``spec`` is an aged variant (its seconds go to ``site.info``), then
    hold ``spec``'s load while the body runs; with ``--client-cpu`` the client and the
    servers are placed first (``cpus.place_site``)."""
    apart = getattr(args, "client_cpu", False)
    if apart:
        site.info["cpus"] = cpus.place_site(site)
    if attack.is_client(spec.attack):
        progress.more(" (Byzantine client", end="")
        with attack.byzantine_client(site, spec.attack, with_servers=apart):
            progress.more(" attacking)")
            yield
        return
    if spec.attack:
        progress.more(f" (node {attack.NODE} as {spec.attack})", end="")
        site.info["attack"] = {"node": attack.NODE, "profile": spec.attack}
    if spec.aged:
        import ageing  # it imports andrew, which imports this module

        progress.more(" (ageing", end="")
        site.info["ageing"] = ageing.age(site.path / ".ageing", ageing.config_from(args))
        progress.more(f" {site.info['ageing']['total_s']:.0f} s)")
    if spec.load == "cpu":
        with CpuHog():
            yield
        return
    if spec.load == "nice-node":
        server = first_server(site.pids)
        if server is None:
            raise common.TargetError(f"{spec.name}: no server process to renice")
        site.info["reniced"] = {"process": server[0], "threads": renice(server[1])}
    yield


@contextlib.contextmanager
def open_target(
    spec: TargetSpec, work: Path, tag: str, args: argparse.Namespace, progress: Progress
) -> Iterator[Site]:
    """``common.open_target``, then the variant's conditions (``conditions``)."""
    with common.open_target(spec, work, tag) as site, conditions(spec, site, args, progress):
        yield site


def config(args: argparse.Namespace) -> dict[str, Any]:
    """The variants' part of a results file's configuration."""
    return {
        "aged": args.aged,
        "load": args.load,
        "client_cpu": getattr(args, "client_cpu", False),
        "attack": attack.attacks_from(getattr(args, "attack", None)),
        "ageing": {
            "andrew_rounds": args.age_andrew_rounds,
            "big_mib": args.age_big_mib,
            "small_files": args.age_small_files,
        }
        if args.aged
        else None,
    }
