"""Running one campaign step through a client's file system and checking its answer.

A read or stat is compared with the model byte for byte, a history read
(:class:`~bftfs.fs.history.Past`, as ``bftfs cat --at`` does) with the model at that moment;
anything else is the operation itself, whose effect a later read checks.  A wrong answer is
raised as the campaign's ``fail(what)``, a :class:`Finding`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from bftfs.fs.errors import NotFound
from bftfs.fs.filesystem import FileSystem
from bftfs.fs.history import NotThen, Past, Undecided
from bftfs.fsobjects import ROOT
from bftfs.testing.campaign_model import DIR, Finding, Step


async def _lookup(fs: FileSystem, name: str) -> int:
    return (await fs.lookup(ROOT, name.encode())).ino


async def _read_all(fs: FileSystem, ino: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        chunks = []
        offset = 0
        while chunk := await fs.read(fh, offset, 1 << 20):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        await fs.release(fh)


async def _write_at(fs: FileSystem, ino: int, flags: int, offset: int, data: bytes) -> None:
    fh = await fs.open(ino, os.O_WRONLY | flags)
    try:
        if data:
            await fs.write(fh, offset, data)
    finally:
        await fs.release(fh)


async def check_name(fs: FileSystem, s: Step, fail: Callable[[str], Finding]) -> None:
    """A read or stat of ``s.name`` against ``s.expect``."""
    try:
        attr = await fs.lookup(ROOT, s.name.encode())
    except NotFound:
        if s.expect is not None:
            raise fail(f"{s.name}: not found, the model has it") from None
        return
    if s.expect is None:
        raise fail(f"{s.name}: found (inode {attr.ino}), the model has no such name")
    if s.expect == DIR:
        if not stat.S_ISDIR(attr.mode):
            raise fail(f"{s.name}: mode {attr.mode:o}, the model has a directory")
        return
    assert isinstance(s.expect, bytes)
    if not stat.S_ISREG(attr.mode):
        raise fail(f"{s.name}: mode {attr.mode:o}, the model has a file")
    if s.kind == "stat":
        size = (await fs.getattr(attr.ino)).size
        if size != len(s.expect):
            raise fail(f"{s.name}: stat says {size} bytes, the model {len(s.expect)}")
        return
    got = await _read_all(fs, attr.ino)
    if got != s.expect:
        pairs = enumerate(zip(got, s.expect, strict=False))
        first = next((i for i, (x, y) in pairs if x != y), None)
        raise fail(
            f"{s.name}: read {len(got)} bytes, the model has {len(s.expect)} "
            f"(first difference at {first}; read starts {got[:24]!r}, "
            f"the model {s.expect[:24]!r})"
        )
    size = (await fs.getattr(attr.ino)).size
    if size != len(got):
        raise fail(f"{s.name}: getattr says {size} bytes after reading {len(got)}")


async def check_past(past: Past, s: Step, moment: int, fail: Callable[[str], Finding]) -> str:
    """What ``s.name`` held at ``moment`` (ns, between two rounds) against ``s.expect``,
    the model's then: ``"absent"``, ``"dir"``, ``"file"`` or ``"undecided"`` (no answer,
    never a wrong one)."""
    try:
        v = await past.resolve("/" + s.name, moment)
    except Undecided:
        return "undecided"
    except NotThen:
        if s.expect is not None:
            raise fail(
                f"{s.name} at moment {s.offset}: did not exist then, the model has it"
            ) from None
        return "absent"
    assert v.state is not None
    if s.expect is None:
        raise fail(f"{s.name} at moment {s.offset}: found, the model had no such name then")
    if s.expect == DIR:
        if v.state.get("k") != "d":
            raise fail(f"{s.name} at moment {s.offset}: a file then, the model a directory")
        return "dir"
    assert isinstance(s.expect, bytes)
    if v.state.get("k") != "f":
        raise fail(f"{s.name} at moment {s.offset}: a directory then, the model a file")
    got = await past.content(v)
    if got != s.expect:
        raise fail(
            f"{s.name} at moment {s.offset}: {len(got)} bytes then, the model "
            f"{len(s.expect)} (starts {got[:24]!r}, the model {s.expect[:24]!r})"
        )
    return "file"


async def run_step(
    fs: FileSystem,
    s: Step,
    fail: Callable[[str], Finding],
    past: Past | None = None,
    moments: list[int] | None = None,
) -> str | None:
    """Run one operation through the file system (checking reads against the model); a
    history read's answer (:func:`check_past`, with ``past`` and the ``moments``)."""
    name = s.name.encode()
    if s.kind == "history":
        assert past is not None and moments is not None
        return await check_past(past, s, moments[s.offset], fail)
    if s.kind in ("read", "stat"):
        await check_name(fs, s, fail)
    elif s.kind == "write":
        try:
            ino = await _lookup(fs, s.name)
        except NotFound:
            fh, _ = await fs.create(ROOT, name, 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
            try:
                if s.data:
                    await fs.write(fh, 0, s.data)
            finally:
                await fs.release(fh)
        else:
            await _write_at(fs, ino, os.O_TRUNC, 0, s.data)
    elif s.kind == "pwrite":
        await _write_at(fs, await _lookup(fs, s.name), 0, s.offset, s.data)
    elif s.kind == "append":
        await _write_at(fs, await _lookup(fs, s.name), os.O_APPEND, 0, s.data)
    elif s.kind == "truncate":
        await fs.setattr(await _lookup(fs, s.name), size=s.size)
    elif s.kind == "rename":
        await fs.rename(ROOT, name, ROOT, s.target.encode())
    elif s.kind == "unlink":
        attr = await fs.lookup(ROOT, name)
        if stat.S_ISDIR(attr.mode):
            await fs.rmdir(ROOT, name)
        else:
            await fs.unlink(ROOT, name)
    elif s.kind == "mkdir":
        await fs.mkdir(ROOT, name, 0o755, 0, 0)
    else:  # pragma: no cover - the planner draws only the kinds above
        raise ValueError(s.kind)
    return None
