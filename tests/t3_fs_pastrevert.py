"""Tier 3: a revert plan carried out through a file system (``fs/pastrevert.py``, ``bftfs
revert``; issue 36), on the in-process cluster with real protocol clients: one client's
rewrite, removal, rename, new file and new directory in two directories undone, the tree
as it was, the removed files sent several to an update; a step that fails (a file moved
away meanwhile) stops with a clear error, and the plan made again finishes the revert."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from t3_fs_pastrestore import cluster_fs, put, read_tree, rewrite

from bftfs.cli.when import range_trees
from bftfs.fs.filesystem import FileSystem
from bftfs.fs.past import Past
from bftfs.fs.pastplan import RevertPlan, plan_revert
from bftfs.fs.pastrestore import TreeWriter
from bftfs.fs.pastrevert import RevertStopped, RevertWriter
from bftfs.fsobjects import ROOT


async def vandal_tree(other: FileSystem) -> tuple[int, dict[str, int]]:
    """``/t`` with directories ``a`` and ``b`` of eight small files each; its id and the
    files' ids."""
    top = (await other.mkdir(ROOT, b"t", 0o755, 0, 0)).ino
    ids = {}
    for d in ("a", "b"):
        sub = (await other.mkdir(top, d.encode(), 0o750, 0, 0)).ino
        for i in range(8):
            ids[f"{d}/f{i}"] = await put(other, sub, f"f{i}".encode(), f"{d}{i}".encode() * 40)
    return top, ids


async def vandalise(other: FileSystem, top: int, ids: dict[str, int]) -> None:
    """In both directories: two files rewritten, three removed, one renamed; a new file
    and a new directory with a file in it."""
    for d in ("a", "b"):
        sub = (await other.lookup(top, d.encode())).ino
        for i in (0, 1):
            await rewrite(other, ids[f"{d}/f{i}"], b"PWNED")
        for i in (2, 3, 4):
            await other.unlink(sub, f"f{i}".encode())
        await other.rename(sub, b"f5", sub, b"f5.stolen")
        await put(other, sub, b"ransom", b"pay")
        junk = (await other.mkdir(sub, b"junk", 0o755, 0, 0)).ino
        await put(other, junk, b"more", b"junk")


def files(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` (:func:`read_tree`) without its directories' times: a revert restores the
    files and where they are, and directories only through their entries (``bftfs.fs.pastplan``),
    so the entries it puts back move their directory's times as any change does."""
    return {
        k: (mode, None, data) if data is None else (mode, mt, data)
        for k, (mode, mt, data) in tree.items()
    }


async def plan(
    new_past: Callable[[], Past], writer: FileSystem, since: int, vandals_file: int
) -> tuple[RevertPlan, Past]:
    """The plan undoing the vandal's changes since ``since`` (the client that wrote
    ``vandals_file`` last), and the reader it used."""
    past = new_past()
    lo, hi, before, after, histories = await range_trees(past, "/t", since, None, writer.clock_ns())
    vandal = histories[vandals_file][0].client  # (who wrote its newest version)
    return plan_revert(vandal, before, after, histories, since_ns=lo, until_ns=hi), past


async def test_a_revert_carried_out_through_the_file_system_gives_the_tree_back(
    tmp_path: Path,
) -> None:
    async with cluster_fs(tmp_path) as (writer, other, new_past, fresh):
        top, ids = await vandal_tree(other)
        then = await read_tree(other, top)
        since = writer.clock_ns()
        await trio.sleep(0.01)
        await vandalise(other, top, ids)
        planned, past = await plan(new_past, writer, since, ids["a/f0"])
        kinds = sorted(a.kind for a in planned.actions)
        assert kinds.count("restore") == 10 and kinds.count("move") == 2, kinds
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        counts = await RevertWriter(tw, "/t").carry_out(planned.actions)
        assert files(await read_tree(await fresh(), top)) == files(then)
        assert counts.files == 10 and counts.deleted == 4, counts
        # The six removed files came back in creates several to an update (the
        # directories leased first), not one update each.
        assert writer.methods["fs.createmany"] >= 2, writer.methods
        assert writer.methods["fs.create"] + writer.methods["fs.createwrite"] == 0, writer.methods


async def test_a_step_that_fails_stops_the_revert_and_the_plan_made_again_finishes_it(
    tmp_path: Path,
) -> None:
    async with cluster_fs(tmp_path) as (writer, other, new_past, fresh):
        top, ids = await vandal_tree(other)
        then = await read_tree(other, top)
        since = writer.clock_ns()
        await trio.sleep(0.01)
        await vandalise(other, top, ids)
        planned, past = await plan(new_past, writer, since, ids["a/f0"])
        # Meanwhile the renamed file is moved on (by the vandal again): the plan's move
        # back of a/f5.stolen finds nothing to move.
        sub = (await other.lookup(top, b"a")).ino
        await other.rename(sub, b"f5.stolen", sub, b"f5.again")
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        with pytest.raises(RevertStopped) as stopped:
            await RevertWriter(tw, "/t").carry_out(planned.actions)
        text = str(stopped.value)
        assert "move a/f5.stolen -> a/f5" in text and "the same command again" in text, text
        assert 0 < stopped.value.done < len(planned.actions)
        await writer.write_back()
        # Run again: the plan from the same start finds what is left.
        planned, past = await plan(new_past, writer, since, ids["a/f0"])
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        await RevertWriter(tw, "/t").carry_out(planned.actions)
        assert files(await read_tree(await fresh(), top)) == files(then)


async def test_removed_files_alone_come_back_several_to_an_update(tmp_path: Path) -> None:
    """Only removals to undo (no step before the files' that would lease their
    directories): the directories are leased first, so the files' creates wait in
    write-back and go together (fails without it: the first closes in a directory are
    sent alone, before write-back holds its lease)."""
    async with cluster_fs(tmp_path) as (writer, other, new_past, fresh):
        top, ids = await vandal_tree(other)
        then = await read_tree(other, top)
        since = writer.clock_ns()
        await trio.sleep(0.01)
        for d in ("a", "b"):
            sub = (await other.lookup(top, d.encode())).ino
            for i in range(1, 7):
                await other.unlink(sub, f"f{i}".encode())
        await rewrite(other, ids["a/f0"], b"PWNED")  # (who the vandal is, for the plan)
        planned, past = await plan(new_past, writer, since, ids["a/f0"])
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        counts = await RevertWriter(tw, "/t").carry_out(planned.actions)
        assert files(await read_tree(await fresh(), top)) == files(then)
        assert counts.files == 13, counts
        assert writer.methods["fs.create"] + writer.methods["fs.createwrite"] == 0, writer.methods
