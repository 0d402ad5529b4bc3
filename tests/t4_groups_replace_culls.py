"""A mount's cached histories across a node replacement through the layout, with ``b = 0``
(issue 66; real node processes, real TCP and LMDB, an in-process mount).

The mount caches the ``<RH, alpha>`` of every object it touched, each alpha holding one
entry per server under the pairwise key of its maker and that server.  ``bftfs node
replace`` gives a node of group 0 a new machine (same index, new key): the entries for it
in the other servers' cached histories were made under the old machine's key, which the
newcomer cannot check, so it culls them and reports them culled.  With ``b = 0`` one
report was taken as proof: the mount marked every correct node of the group malevolent,
left them out for good, and the group stayed unavailable to it (``QUUnavailable``) while
all four nodes were up.  Here, once the newcomer has caught up, the mount lists, reads and
rewrites the files it cached before the replacement (the newcomer is in the preferred
quorum of three objects in four, ``core.preferred_order``): every operation completes and
no server is excluded.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import names, read_back

from bftfs import local
from bftfs.cli.main import main
from bftfs.fs.clients.groups import GroupedQU
from bftfs.fs.session import Session, open_session
from bftfs.fsobjects.limits import ROOT
from bftfs.layout.groups import load_layout
from bftfs.layout.model import Layout
from bftfs.layout.spread import dir_group
from bftfs.testing.processes import ProcessCluster, wait_caught_up

pytestmark = pytest.mark.slow  # 8 node processes, a replacement and a catch-up

OPTIONS: dict[str, Any] = {"t": 1, "b": 0, "groups": 2, "clients": 1}
FILES = 12


def _name_on(layout: Layout, group: int) -> bytes:
    """A name whose directory, made at the root, is placed on ``group``."""
    return next(b"d%d" % i for i in range(1000) if dir_group(layout, ROOT, b"d%d" % i) == group)


async def _make_file(s: Session, parent: int, name: bytes, data: bytes) -> int:
    fh, a = await s.fs.create(parent, name, 0o644, 0, 0, os.O_RDWR)
    await s.fs.write(fh, 0, data)
    await s.fs.release(fh)
    return a.ino


def _excluded(qu: GroupedQU) -> list[tuple[int, ...]]:
    """Per group, the servers the mount's Q/U client proved malevolent."""
    out = []
    for c in qu.clients:
        st = c.statistics()
        out.append(tuple(getattr(st, "excluded_servers", ())))
    return out


def test_cached_histories_across_a_replacement_prove_nobody_malevolent(tmp_path: Path) -> None:
    home = tmp_path / "c"
    rng = random.Random(66)
    with ProcessCluster(home, **OPTIONS) as pc:
        v1 = load_layout(pc.config)
        assert v1 is not None
        (tmp_path / "n").mkdir()
        port = local.cluster_ports(tmp_path / "n", 1)[0]
        leaving = v1.groups[0].members[1]

        async def body() -> None:
            async with open_session(pc.config, "client0") as s:
                qu = s.qu
                assert isinstance(qu, GroupedQU)
                switched = trio.Event()
                qu.switched.append(lambda _layout: switched.set())
                d = (await s.fs.mkdir(ROOT, _name_on(v1, 0), 0o755, 0, 0)).ino
                assert v1.group_of_object(d) == 0
                files = {}
                for k in range(FILES):
                    data = rng.randbytes(rng.choice([0, 300, 9000]))
                    files[k] = (await _make_file(s, d, b"f%d" % k, data), data)
                argv = ["node", "replace", str(leaving), "--address", f"127.0.0.1:{port}",
                        "--config", str(home / "cluster.toml")]  # fmt: skip
                assert await trio.to_thread.run_sync(main, argv) == 0
                with trio.fail_after(60):  # the nodes tell the mount (a push)
                    await switched.wait()
                assert qu.layout.version == v1.version + 1
                pc.config = local.load_cluster(home)  # stop the newcomer at the end
                await trio.to_thread.run_sync(pc.start, leaving)  # the new machine
                await trio.to_thread.run_sync(wait_caught_up, pc.config, leaving, 120)
                # The mount's cached histories of these objects predate the replacement.
                assert sorted(await names(s.fs, d)) == sorted(b"f%d" % k for k in range(FILES))
                for k, (ino, data) in files.items():
                    assert await read_back(s.fs, ino) == data
                    assert (await s.fs.lookup(d, b"f%d" % k)).ino == ino
                    fh = await s.fs.open(ino, os.O_RDWR)
                    await s.fs.write(fh, len(data), b"+%d" % k)
                    await s.fs.release(fh)
                assert _excluded(qu) == [(), ()]
                for k, (ino, data) in files.items():
                    assert await read_back(s.fs, ino) == data + b"+%d" % k

        trio.run(body)
