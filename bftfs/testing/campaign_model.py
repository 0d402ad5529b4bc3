"""The adversary campaign's model (``bftfs/testing/campaign.py``): operations and answers.

The planner draws each round's operations on disjoint names of the root directory and
decides every answer in advance (close-to-open semantics without a kernel's cache, the model
of :mod:`bftfs.testing.consistency`), so a read or stat has exactly one right answer; it
also keeps the model at each moment between rounds, for the history reads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bftfs.testing.consistency import NAMES, SIZES

#: Operation kinds and their weights.
KINDS = (
    "write", "pwrite", "append", "truncate", "rename", "unlink", "mkdir", "read", "stat",
    "history",
)  # fmt: skip
WEIGHTS = (4, 3, 3, 2, 2, 2, 1, 6, 2, 2)


class Finding(AssertionError):
    """The campaign found something wrong: a wrong answer, a failure, a hang, a history
    that is not linearizable.  The message names the schedule and how to replay it."""


#: A name's entry: file contents (bytes) or the directory marker.
DIR = "dir"
Entry = bytes | str | None


@dataclass
class Step:
    """One file-system operation of a round, with the model's answer decided in advance."""

    client: int
    kind: str
    name: str
    #: The entries of the names it touches after it (applied to the model after the round).
    after: dict[str, Entry]
    #: For reads and stats: what the model says the name holds.
    expect: Entry = None
    data: bytes = b""
    offset: int = 0
    size: int = 0
    target: str = ""

    def text(self) -> str:
        what = {
            "write": f"{len(self.data)} bytes",
            "append": f"{len(self.data)} bytes",
            "pwrite": f"{len(self.data)} bytes at {self.offset}",
            "truncate": f"to {self.size}",
            "rename": f"over {self.target}",
            "history": f"at moment {self.offset}",
        }.get(self.kind, "")
        return f"client {self.client}: {self.kind} {self.name} {what}".rstrip()


class Planner:
    """Draws rounds of operations on disjoint names and keeps the model."""

    def __init__(self, rng: random.Random, clients: int) -> None:
        self.rng = rng
        self.clients = clients
        self.model: dict[str, Entry] = {}
        #: The model at each moment taken between rounds (0: before the first).
        self.past: list[dict[str, Entry]] = [{}]
        self.tag = 0

    def _data(self, size: int) -> bytes:
        self.tag += 1
        head = b"%d:" % self.tag  # every write distinct, so a stale read cannot pass
        body = bytes((self.tag + i * 7) % 251 for i in range(max(0, size - len(head))))
        return (head + body)[:size]

    def round(self) -> list[Step]:
        """Up to one operation per client; no two touch the same name."""
        taken: set[str] = set()
        steps = []
        for k in self.rng.sample(range(self.clients), self.rng.randint(1, self.clients)):
            free = [n for n in NAMES if n not in taken]
            if not free:
                break
            s = self._step(k, self.rng.choice(free), taken)
            taken.update(s.after, {s.name})
            steps.append(s)
        return steps

    def _step(self, k: int, name: str, taken: set[str]) -> Step:
        kind = self.rng.choices(KINDS, weights=WEIGHTS)[0]
        e = self.model.get(name)
        rng = self.rng
        if kind == "history":
            j = rng.randrange(len(self.past))
            return Step(k, "history", name, {}, expect=self.past[j].get(name), offset=j)
        if kind in ("read", "stat") or (e == DIR and kind not in ("rename", "unlink")):
            return Step(k, rng.choice(("read", "stat")), name, {}, expect=e)
        if kind == "mkdir":
            if e is None:
                return Step(k, "mkdir", name, {name: DIR})
            kind = "write"
        if e is None and kind in ("pwrite", "append", "truncate", "rename", "unlink"):
            kind = "write"
        if kind == "write":
            data = self._data(rng.choice(SIZES))
            return Step(k, "write", name, {name: data}, data=data)
        if kind == "unlink":
            return Step(k, "unlink", name, {name: None})
        if kind == "rename":
            targets = [
                n for n in NAMES if n != name and n not in taken and self.model.get(n) != DIR
            ]
            if e == DIR:
                targets = [n for n in targets if self.model.get(n) is None]
            if not targets:
                return Step(k, "stat", name, {}, expect=e)
            target = rng.choice(targets)
            return Step(k, "rename", name, {name: None, target: e}, target=target)
        assert isinstance(e, bytes)
        if kind == "append":
            data = self._data(rng.choice(SIZES[1:7]))
            return Step(k, "append", name, {name: e + data}, data=data)
        if kind == "pwrite":
            data = self._data(rng.choice(SIZES[1:7]))
            offset = rng.randrange(0, len(e) + 40_000)
            c = bytearray(e)
            if offset > len(c):
                c.extend(bytes(offset - len(c)))
            c[offset : offset + len(data)] = data
            return Step(k, "pwrite", name, {name: bytes(c)}, data=data, offset=offset)
        size = rng.choice((0, 1, 4000, len(e) // 2, len(e) + 30_000))
        after = e[:size] + bytes(max(0, size - len(e)))
        return Step(k, "truncate", name, {name: after}, size=size)

    def apply(self, steps: list[Step]) -> None:
        """The round's effects on the model, and the model at the moment after it."""
        for s in steps:
            for name, e in s.after.items():
                if e is None:
                    self.model.pop(name, None)
                else:
                    self.model[name] = e
        self.past.append(dict(self.model))
