"""Whole files used as registers by several mounts at once, each history checked for
linearizability (issue 35: "each history checked for linearizability").

The close-to-open checker (:mod:`bftfs.testing.consistency`) runs one operation at a time,
so each read has one right answer.  This workload runs *beside* it: one thread per mount,
each reading and rewriting a few files of fixed size at the same time as the others, and
records every operation's real-time interval.  A write is ``open``, one ``pwrite`` of the
whole file at offset 0, ``close`` (the close sends it: close-to-open); a read is ``open``,
``pread`` of the whole file, ``close``.  The sizes never change and the names are never
renamed or removed, so neither the kernel's attribute nor its name cache can excuse a stale
answer: a whole-file operation on such a file is a read or a write of one register, and the
history over all mounts must be linearizable (:mod:`bftfs.testing.linearizability`): every
read returns the value of a write that may be the latest before it, and once any mount has
read a value no later operation anywhere reads an older one.

One thread per *mount*, never two on one mount: within a mount the daemon may serve one
handle's read from another handle's buffered bytes before their close, which local
semantics allow and linearizability across mounts does not.

Each value is a 16-digit tag written at the start of the file and repeated through it; a
read whose bytes are not one tag's content (torn, zeroed, short) is an error of its own.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bftfs.testing.linearizability import READ, WRITE, Op, Verdict, check

#: (name, size): an inline file (its bytes in its Q/U object) and a one-block file (a
#: PASIS block the object points at).
REGISTERS = (("inline", 3000), ("block", 20_000))
#: The directory beside the checker's, as seen through each mount.
DIRECTORY = "registers"
#: Seconds between one thread's operations: a pace, so the registers add concurrency
#: without starving the checker's own operations of the nodes.
PACE = 0.02
#: Operations shown around a failure.
TRACE = 40


class Torn(AssertionError):
    """A read returned bytes that are no single write's content."""


class NotLinearizable(AssertionError):
    """The recorded history has no legal order."""


def content(tag: int, size: int) -> bytes:
    """The file's bytes for value ``tag``: the tag, then its digits repeated."""
    head = b"%016d" % tag
    return (head * (size // len(head) + 1))[:size]


def tag_of(data: bytes, size: int) -> int:
    """The tag ``data`` holds; :class:`Torn` if it is not exactly one tag's content."""
    if len(data) != size:
        raise Torn(f"read {len(data)} bytes of a {size}-byte register")
    try:
        tag = int(data[:16])
    except ValueError:
        raise Torn(f"no tag at the start: {data[:16]!r}") from None
    if data != content(tag, size):
        raise Torn(f"bytes of tag {tag} mixed with others")
    return tag


@dataclass
class History:
    """What the threads did: every operation, and what they counted."""

    ops: list[Op] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self) -> Verdict:
        """The history's verdict (register by register; every register starts at tag 0)."""
        return check(self.ops, initial=0)

    def text(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return f"registers: {len(self.ops)} operations in {self.seconds:.1f} s: {counts}"

    def around(self, key: str) -> str:
        """The last operations on ``key``, for a failure's message."""
        ops = sorted((op for op in self.ops if op.key == key), key=lambda op: op.start)
        t0 = ops[0].start if ops else 0.0
        lines = [
            f"  {op.client} {op.kind} {op.value} [{op.start - t0:.3f}, "
            f"{'pending' if op.end is None else f'{op.end - t0:.3f}'}]"
            for op in ops[-TRACE:]
        ]
        return "\n".join(lines)


class Workload:
    """The register threads over ``dirs`` (one mount each)."""

    def __init__(self, dirs: Sequence[Path], seed: int, *, pace: float = PACE) -> None:
        self.dirs = list(dirs)
        self.seed = seed
        self.pace = pace
        self.history = History()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._next_tag = 0
        self._began = 0.0

    def prepare(self) -> None:
        """Make the registers at tag 0, synced, through the first mount."""
        where = self.dirs[0]
        where.mkdir(exist_ok=True)
        for name, size in REGISTERS:
            fd = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.pwrite(fd, content(0, size), 0)
                os.fsync(fd)
            finally:
                os.close(fd)

    def start(self) -> None:
        self._began = time.monotonic()
        for m, d in enumerate(self.dirs):
            thread = threading.Thread(
                target=self._loop, args=(m, d, random.Random(self.seed * 1009 + m)), daemon=True
            )
            thread.name = f"registers mount {m}"
            self._threads.append(thread)
            thread.start()

    def stop(self) -> History:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.history.seconds = time.monotonic() - self._began
        return self.history

    def _tag(self) -> int:
        with self._lock:
            self._next_tag += 1
            return self._next_tag

    def _record(self, op: Op, count: str) -> None:
        with self._lock:
            self.history.ops.append(op)
            self.history.counts[count] += 1

    def _loop(self, m: int, where: Path, rng: random.Random) -> None:
        while not self._stop.is_set():
            name, size = rng.choice(REGISTERS)
            try:
                if rng.random() < 0.4:
                    self._write(m, where / name, name, size)
                else:
                    self._read(m, where / name, name, size)
            except (OSError, Torn) as e:
                with self._lock:
                    self.history.errors.append(f"mount {m} {name}: {e!r}")
                return
            self._stop.wait(self.pace)

    def _write(self, m: int, path: Path, name: str, size: int) -> None:
        tag = self._tag()
        start = time.monotonic()
        end: float | None = None
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, content(tag, size), 0)
            finally:
                os.close(fd)
            end = time.monotonic()
        finally:
            # A write that raised may or may not have taken effect: pending.
            self._record(Op(name, WRITE, tag, start, end, m), "write" if end else "write failed")

    def _read(self, m: int, path: Path, name: str, size: int) -> None:
        start = time.monotonic()
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, size + 1, 0)
        finally:
            os.close(fd)
        end = time.monotonic()
        tag = tag_of(data, size)
        self._record(Op(name, READ, tag, start, end, m), "read")

    def own_and_others(self) -> Counter[str]:
        """Reads that returned the reader's own last value, another mount's, or tag 0: a
        history where no read ever saw another mount's write checks nothing across mounts."""
        writer = {op.value: op.client for op in self.history.ops if op.kind == WRITE}
        seen: Counter[str] = Counter()
        for op in self.history.ops:
            if op.kind == READ:
                who = writer.get(op.value)
                seen["initial" if who is None else "own" if who == op.client else "other"] += 1
        return seen


@contextlib.contextmanager
def running(dirs: Sequence[Path], seed: int, *, pace: float = PACE) -> Iterator[Workload]:
    """The registers of ``dirs`` (each a mount's view of the checker's directory; the
    registers go in a sibling :data:`DIRECTORY`) read and written until the block ends;
    then the history is checked: raises :class:`NotLinearizable` or the first error a
    thread met (an ``OSError`` such as EIO, or :class:`Torn`)."""
    work = Workload([Path(d).parent / DIRECTORY for d in dirs], seed, pace=pace)
    work.prepare()
    work.start()
    try:
        yield work
    finally:
        history = work.stop()
    if history.errors:
        raise AssertionError(f"{history.text()}; errors: {history.errors}")
    verdict = history.check()
    if not verdict:
        raise NotLinearizable(f"{verdict.reason}\n{history.around(str(verdict.key))}")
