"""A multi-client consistency checker: close-to-open semantics, checked on a model.

Two or three real mounts (one client identity each) of one cluster of real node processes
take turns running seeded random operations on a few names in one directory - create,
write, ``pwrite``, append, truncate, rename, unlink, open/read/close - while nodes are
killed and restarted one at a time (never more than ``t`` down at once).  Operations run
one after another, so each has one right answer under close-to-open consistency (NFS's, the
one ``docs/fs.md`` promises): an open on any mount sees the contents and size of the last
close on any mount.  Every read is compared with a model of the directory, byte for byte,
and its ``fstat`` size with the model's size.

What the model allows beyond that, because the kernel caches names (``docs/fs.md``): a mount
that looked a name up may keep reaching the object it found for the entry timeout after
another mount renamed that object away (a "ghost": the checker then only reads the name
there, and accepts the renamed object's contents too), and a mount that found a name
missing may keep finding it missing for the attribute timeout after another mount created
it (reads may then answer ENOENT, and a non-creating operation may fail with ENOENT and
change nothing).  Everything else must match exactly; any other error (EIO, ESTALE, ...)
fails the run.

On a cluster of groups (``mounted(groups=G)``, docs/layout.md) the names span groups:
``spread_names`` gives two names in each of ``G`` directories made at the root, one on
each group (a file lives on its directory's group), so renames and unlinks between them
are cross-group transactions.

``python -m bftfs.testing.consistency --ops 400 --mounts 3 --seed 7`` runs it on a fresh
cluster in a temporary directory and prints the report.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bftfs.config import ClusterConfig
from bftfs.fuse.control import DEFAULT_ENTRY_TIMEOUT, DEFAULT_TIMEOUT
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

#: Names the operations draw from: few, so that operations meet on the same files.
NAMES = ("a", "b", "c", "d", "e")
#: Sizes a write draws from: empty, inline, around the inline limit and block boundaries.
SIZES = (0, 1, 100, 5000, 8191, 8193, 20_000, 65_535, 65_537, 150_000)
#: Slack added to the kernel's cache timeouts (the checker's clock and the kernel's differ).
SLACK = 0.5
#: Operations shown with a failure.
TRACE = 60


class Inconsistent(AssertionError):
    """A mount answered something close-to-open semantics does not allow."""


@dataclass
class Model:
    """The directory as close-to-open semantics defines it after each operation."""

    names: dict[str, int] = field(default_factory=dict)  # name -> object
    content: dict[int, bytearray] = field(default_factory=dict)  # object -> bytes
    next_object: int = 1
    #: mount -> name -> {object the mount may still reach by the name: until when}.
    ghosts: dict[int, dict[str, dict[int, float]]] = field(default_factory=dict)
    #: mount -> name -> when the mount last found it missing.
    missing_seen: dict[int, dict[str, float]] = field(default_factory=dict)
    #: mount -> name -> until when the mount may still find it missing.
    maybe_missing: dict[int, dict[str, float]] = field(default_factory=dict)

    def new_object(self, data: bytes = b"") -> int:
        o = self.next_object
        self.next_object += 1
        self.content[o] = bytearray(data)
        return o

    def alive(self, o: int) -> bool:
        return o in self.names.values()


@dataclass
class Report:
    """What a run did: operations by kind and outcome, the fault schedule, the seed."""

    seed: int
    mounts: int
    ops: Counter[str] = field(default_factory=Counter)
    #: Random operations drawn (some change nothing: e.g. an unlink of a missing name is
    #: not tried), and reads of every name from every mount at the end.
    steps: int = 0
    schedule: list[str] = field(default_factory=list)
    allowances: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def text(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        allowed = ", ".join(f"{k} {v}" for k, v in sorted(self.allowances.items())) or "none"
        return (
            f"seed {self.seed}, {self.mounts} mounts, {self.steps} steps, "
            f"{sum(self.ops.values())} operations in {self.seconds:.1f} s: {ops}\n"
            f"faults and changes: {'; '.join(self.schedule) or 'none'}\n"
            f"cache allowances used: {allowed}"
        )


class Checker:
    """Runs the operations on ``dirs`` (one directory, as seen through each mount)."""

    def __init__(
        self,
        dirs: Sequence[Path],
        rng: random.Random,
        report: Report,
        *,
        names: Sequence[str] = NAMES,
        attr_timeout: float = DEFAULT_TIMEOUT,
        entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dirs = list(dirs)
        self.names = tuple(names)
        self.rng = rng
        self.report = report
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.clock = clock
        self.model = Model()
        self.trace: list[str] = []
        for m in range(len(dirs)):
            self.model.ghosts[m] = {}
            self.model.missing_seen[m] = {}
            self.model.maybe_missing[m] = {}

    # Cache allowances ----------------------------------------------------------------------

    def _ghosts(self, m: int, name: str) -> list[int]:
        """Objects other than the model's that mount ``m`` may still reach by ``name``."""
        got = self.model.ghosts[m].get(name, {})
        now = self.clock()
        for o in [o for o, until in got.items() if now > until]:
            del got[o]
        return sorted(got)

    def _may_be_missing(self, m: int, name: str) -> bool:
        until = self.model.maybe_missing[m].get(name)
        return until is not None and self.clock() <= until

    def _created(self, by: int, name: str) -> None:
        """``name`` now exists (made by mount ``by``): mounts that found it missing lately
        may keep a negative entry for the attribute timeout."""
        now = self.clock()
        for m, seen in self.model.missing_seen.items():
            if m != by and name in seen and now - seen[name] <= self.attr_timeout + SLACK:
                self.model.maybe_missing[m][name] = seen[name] + self.attr_timeout + SLACK
        self.model.maybe_missing[by].pop(name, None)

    def _moved_away(self, by: int, name: str, o: int) -> None:
        """``name`` stopped naming the live object ``o`` (renamed): other mounts may keep
        reaching ``o`` by it for the entry timeout."""
        until = self.clock() + self.entry_timeout + SLACK
        for m in self.model.ghosts:
            if m != by:
                self.model.ghosts[m].setdefault(name, {})[o] = until

    def _saw_missing(self, m: int, name: str) -> None:
        self.model.missing_seen[m][name] = self.clock()

    # Operations ----------------------------------------------------------------------------

    def step(self) -> None:
        """One random operation on one random mount, checked against the model."""
        self.report.steps += 1
        m = self.rng.randrange(len(self.dirs))
        name = self.rng.choice(self.names)
        if self._ghosts(m, name):
            self._read(m, name)  # only reads through a name that may lead elsewhere here
            return
        kind = self.rng.choices(
            ("write", "pwrite", "append", "truncate", "rename", "unlink", "read"),
            weights=(4, 3, 4, 2, 2, 2, 8),
        )[0]
        getattr(self, "_" + kind)(m, name)

    def _fail(self, m: int, what: str) -> Inconsistent:
        trace = "\n  ".join(self.trace)
        return Inconsistent(f"mount {m}: {what}\nmodel: {self._describe()}\nlast:\n  {trace}")

    def _describe(self) -> str:
        return ", ".join(
            f"{n}->#{o}({len(self.model.content[o])} bytes)"
            for n, o in sorted(self.model.names.items())
        )

    def _data(self, size: int) -> bytes:
        tag = self.rng.randrange(256)
        return bytes((tag + i * 7) % 251 for i in range(size))

    def _count(self, kind: str, m: int, what: str) -> None:
        self.report.ops[kind] += 1
        self.trace.append(f"mount {m}: {kind} {what}")
        del self.trace[:-TRACE]

    def _missing_allowed(self, m: int, name: str, e: OSError) -> bool:
        """A non-creating operation found ``name`` missing: allowed only while this mount
        may still hold a negative entry for it (then it changed nothing)."""
        if e.errno == errno.ENOENT and self._may_be_missing(m, name):
            self.report.allowances["negative entry"] += 1
            return True
        return False

    def _open_write_close(self, m: int, name: str, flags: int, data: bytes, kind: str) -> None:
        """One creating write (``open(O_CREAT | flags)``, write, close) and its effect on
        the model: a new object, or the existing one's content replaced (O_TRUNC) or
        extended (O_APPEND)."""
        fd = os.open(self.dirs[m] / name, os.O_WRONLY | os.O_CREAT | flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self._count(kind, m, f"{name} {len(data)} bytes")
        o = self.model.names.get(name)
        if o is None:
            self.model.names[name] = self.model.new_object(data)
            self._created(m, name)
        elif flags & os.O_APPEND:
            self.model.content[o].extend(data)
        else:
            self.model.content[o][:] = data

    def _write(self, m: int, name: str) -> None:
        data = self._data(self.rng.choice(SIZES))
        self._open_write_close(m, name, os.O_TRUNC, data, "write")

    def _pwrite(self, m: int, name: str) -> None:
        o = self.model.names.get(name)
        if o is None:
            return self._write(m, name)
        old = len(self.model.content[o])
        offset = self.rng.randrange(0, old + 70_000)
        data = self._data(self.rng.choice(SIZES[1:7]))
        try:
            fd = os.open(self.dirs[m] / name, os.O_WRONLY)
        except OSError as e:
            if self._missing_allowed(m, name, e):
                return None
            raise
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        self._count("pwrite", m, f"{name} {len(data)} bytes at {offset}")
        c = self.model.content[o]
        if offset > len(c):
            c.extend(bytes(offset - len(c)))
        c[offset : offset + len(data)] = data
        return None

    def _append(self, m: int, name: str) -> None:
        data = self._data(self.rng.choice(SIZES[1:7]))
        self._open_write_close(m, name, os.O_APPEND, data, "append")

    def _truncate(self, m: int, name: str) -> None:
        o = self.model.names.get(name)
        if o is None:
            return None
        size = self.rng.choice((0, 1, 4000, len(self.model.content[o]) // 2, 90_000))
        try:
            os.truncate(self.dirs[m] / name, size)
        except OSError as e:
            if self._missing_allowed(m, name, e):
                return None
            raise
        self._count("truncate", m, f"{name} to {size}")
        c = self.model.content[o]
        if size < len(c):
            del c[size:]
        else:
            c.extend(bytes(size - len(c)))
        return None

    def _rename(self, m: int, name: str) -> None:
        o = self.model.names.get(name)
        target = self.rng.choice([n for n in self.names if n != name])
        if o is None or self._ghosts(m, target):
            return None
        try:
            os.rename(self.dirs[m] / name, self.dirs[m] / target)
        except OSError as e:
            if self._missing_allowed(m, name, e):
                return None
            raise
        across = name.rpartition("/")[0] != target.rpartition("/")[0]  # two directories
        self._count("rename across" if across else "rename", m, f"{name} over {target}")
        replaced = self.model.names.get(target)
        self.model.names[target] = self.model.names.pop(name)
        if replaced is not None and not self.model.alive(replaced):
            del self.model.content[replaced]
        self._moved_away(m, name, o)
        self._saw_missing(m, name)
        self._created(m, target)
        return None

    def _unlink(self, m: int, name: str) -> None:
        o = self.model.names.get(name)
        if o is None:
            return None
        try:
            os.unlink(self.dirs[m] / name)
        except OSError as e:
            if self._missing_allowed(m, name, e):
                return None
            raise
        self._count("unlink", m, name)
        self._saw_missing(m, name)
        del self.model.names[name]
        if not self.model.alive(o):
            del self.model.content[o]
        return None

    def _read(self, m: int, name: str) -> None:
        """open, fstat, read everything, close: the size and bytes of the last close."""
        allowed: list[bytes | None] = []
        o = self.model.names.get(name)
        allowed.append(None if o is None else bytes(self.model.content[o]))
        for ghost in self._ghosts(m, name):
            if self.model.alive(ghost):
                allowed.append(bytes(self.model.content[ghost]))
        if o is not None and self._may_be_missing(m, name):
            allowed.append(None)
        try:
            fd = os.open(self.dirs[m] / name, os.O_RDONLY)
        except FileNotFoundError:
            self._count("read", m, f"{name}: missing")
            if None not in allowed:
                what = f"{name}: ENOENT, expected {len(allowed[0] or b'')} bytes"
                raise self._fail(m, what) from None
            if allowed[0] is not None:
                self.report.allowances["negative entry"] += 1
            self._saw_missing(m, name)
            return
        try:
            size = os.fstat(fd).st_size
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            got = b"".join(chunks)
        finally:
            os.close(fd)
        self._count("read", m, f"{name}: {len(got)} bytes")
        if got not in allowed:
            sizes = [None if a is None else len(a) for a in allowed]
            raise self._fail(m, f"{name}: read {len(got)} bytes, allowed sizes {sizes}")
        if size != len(got):
            raise self._fail(m, f"{name}: fstat says {size} bytes, read {len(got)}")
        if got != allowed[0]:
            self.report.allowances["renamed-away entry"] += 1

    def check_all(self) -> None:
        """Read every name from every mount."""
        for m in range(len(self.dirs)):
            for name in self.names:
                self._read(m, name)


def fault_schedule(rng: random.Random, ops: int, nodes: int, faults: int) -> dict[int, tuple]:
    """``faults`` kill/restart cycles spread over the run, one node down at a time, each
    cycle a different node when it can be: ``{operation index: ("kill"|"start", node)}``."""
    out: dict[int, tuple] = {}
    if faults <= 0:
        return out
    span = ops // faults
    victims = rng.sample(range(nodes), min(faults, nodes))
    while len(victims) < faults:
        victims.append(rng.randrange(nodes))
    for k, node in enumerate(victims):
        start = k * span
        out[start + span // 4] = ("kill", node)
        out[start + (3 * span) // 4] = ("start", node)
    return out


#: An administrator's change run beside the operations (issue 35): its label, and what
#: runs it (in a thread of its own, so the operations go on while it does).
Change = tuple[str, Callable[[], object]]


class Changes:
    """The :data:`Change` s of a run, one at a time: each starts at its operation index,
    after the one before it ended (the checker waits for that between two operations);
    whatever a change raised is raised again when the next starts or the run ends."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self._running: tuple[str, threading.Thread, list[BaseException]] | None = None

    def start(self, i: int, change: Change) -> None:
        self.finish(i)
        label, fn = change
        errors: list[BaseException] = []

        def body() -> None:
            try:
                fn()
            except BaseException as e:  # raised in the checker's thread by finish()
                errors.append(e)

        thread = threading.Thread(target=body, name=f"change {label}", daemon=True)
        self.report.schedule.append(f"op {i}: {label} begins")
        thread.start()
        self._running = (label, thread, errors)

    def finish(self, i: int | None) -> None:
        if self._running is None:
            return
        label, thread, errors = self._running
        thread.join()
        self._running = None
        self.report.schedule.append(f"{'end' if i is None else f'op {i}'}: {label} done")
        if errors:
            raise errors[0]


class Nodes(Protocol):
    """What :func:`run` needs of a cluster: its configuration, a node killed and started
    again (:class:`ProcessCluster`; ``bftfs.testing.wan.Nodes`` across a WAN)."""

    config: ClusterConfig

    def kill(self, i: int) -> None: ...

    def start(self, i: int) -> None: ...


def run(
    cluster: Nodes,
    dirs: Sequence[Path],
    *,
    seed: int,
    ops: int,
    faults: int,
    attr_timeout: float = DEFAULT_TIMEOUT,
    entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
    changes: Mapping[int, Change] | None = None,
    names: Sequence[str] = NAMES,
) -> Report:
    """``ops`` operations on ``names`` in ``dirs`` with ``faults`` kill/restart cycles and
    ``changes`` (operation index: :data:`Change`) run beside them; raises :class:`Inconsistent` (or
    the unexpected ``OSError``, or what a change raised) on the first wrong answer."""
    rng = random.Random(seed)
    report = Report(seed, len(dirs))
    checker = Checker(
        dirs, rng, report, names=names, attr_timeout=attr_timeout, entry_timeout=entry_timeout
    )
    schedule = fault_schedule(random.Random(seed ^ 0x5EED), ops, len(cluster.config.nodes), faults)
    running = Changes(report)
    down: set[int] = set()
    start = time.monotonic()
    try:
        for i in range(ops):
            if changes and i in changes:
                running.start(i, changes[i])
            action = schedule.get(i)
            if action is not None:
                verb, node = action
                report.schedule.append(f"op {i}: {verb} node {node}")
                if verb == "kill":
                    cluster.kill(node)
                    down.add(node)
                else:
                    cluster.start(node)
                    down.discard(node)
            try:
                checker.step()
            except OSError as e:
                raise checker._fail(-1, f"operation {i} failed: {e!r}") from e
        running.finish(None)
        for node in sorted(down):
            cluster.start(node)
            report.schedule.append(f"end: start node {node}")
        down.clear()
        checker.check_all()
    finally:
        with contextlib.suppress(BaseException):
            running.finish(None)  # a change still running is waited for, not left behind
        for node in sorted(down):
            with contextlib.suppress(Exception):
                cluster.start(node)
        report.seconds = time.monotonic() - start
    return report


def spread_names(cfg: ClusterConfig) -> tuple[str, ...]:
    """On a cluster of groups, the checker's names: ``a`` and ``b`` in each of one
    directory per group, the directory's name picked so that a mkdir at the root places it
    on that group (``layout/spread.dir_group``); ``NAMES`` on a cluster of one group."""
    from bftfs.fsobjects.limits import ROOT
    from bftfs.layout.groups import load_layout
    from bftfs.layout.spread import dir_group

    layout = load_layout(cfg)
    if layout is None:
        return NAMES

    def on(g: int) -> str:
        return next(f"w{i}" for i in range(1000) if dir_group(layout, ROOT, b"w%d" % i) == g)

    dirs = [on(g.id) for g in layout.groups]
    return tuple(f"{d}/{n}" for d in dirs for n in ("a", "b"))


@contextlib.contextmanager
def mounted(
    home: Path, mounts: int, options: str | None = None, groups: int = 1, **cluster: Any
) -> Iterator[tuple[ProcessCluster, list[Path]]]:
    """A fresh cluster of node processes in ``home`` and ``mounts`` mounts of it, one client
    identity each, with one shared directory made; stopped and unmounted on exit.
    ``options``: mount options added to the defaults (``lease=10``: the mounts take
    leases, and every read is still checked against close-to-open); ``groups``: a cluster
    of that many groups, whose mounts' roots are yielded, with the directories of
    :func:`spread_names` made (at the root, where a new directory is spread, not kept in
    its parent's group under a lease); ``cluster``: more options of
    :class:`ProcessCluster` (``engine``, ``node_args``)."""
    if groups > 1:
        cluster["groups"] = groups
    with (
        ProcessCluster(
            home / "cluster", map_size=1 << 30, durable=False, clients=mounts, **cluster
        ) as pc,
        contextlib.ExitStack() as stack,
    ):
        if True:
            points = [
                stack.enter_context(
                    Mount(
                        pc.config,
                        home / f"m{k}",
                        client=f"client{k}",
                        options=None if options is None else f"allow_other,{options}",
                    )
                )
                for k in range(mounts)
            ]
            if groups > 1:  # the names' directories, at the root: spread over the groups
                for d in sorted({n.split("/")[0] for n in spread_names(pc.config)}):
                    (points[0].mountpoint / d).mkdir()
                yield pc, [p.mountpoint for p in points]
                return
            (points[0].mountpoint / "work").mkdir()
            yield pc, [p.mountpoint / "work" for p in points]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--mounts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=2, help="kill/restart cycles")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, mounted(Path(tmp), args.mounts) as (pc, dirs):
        report = run(pc, dirs, seed=args.seed, ops=args.ops, faults=args.faults)
    print(report.text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
