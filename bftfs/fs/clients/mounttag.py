"""The calling mount's number on every file-system request (issue 33).

A lease's holder is a client *and* one of its mounts (``fsobjects/leases.py``): two mounts
of one client identity (two laptops with the same bundle) must recall each other's leases
as two clients do, or one would answer from a lease while the other changed what it
covers.  The nodes know only the principal a request is signed by, so each mount says
which one it is: ``lm`` in every ``fs`` update's argument map, and an envelope around the
argument of every query an exclusive lease guards, and in a request to publish's map.

This sits right above the Q/U client, below the encryption boundary (``fs/clients/seal.py``), so
what is sealed is the argument the methods take and the envelope stays outside it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bftfs.fab.metaclient import FabClientStatistics
from bftfs.fs.clients.protocols import MetadataClient, Objects
from bftfs.fs.clients.reading import ASK_PUBLISH, TOKENS
from bftfs.fsobjects.leases import MOUNT, tag_query
from bftfs.fsobjects.methods import GUARDED_QUERIES
from bftfs.qu.client import ClientStatistics
from bftfs.qu.timestamp import Timestamp


class MountTagged:
    """A metadata client whose ``fs`` requests say which mount sends them; settling,
    history reads, the client's id, faults and statistics are the client's own."""

    def __init__(self, qu: MetadataClient, mount: int = 0) -> None:
        """``mount``: this mount's number (``Meta.lease_token``; 0 until it is known)."""
        self.inner = qu
        self.mount = mount

    @property
    def client_id(self) -> int:
        return self.inner.client_id

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return self.inner.faults

    def statistics(self) -> ClientStatistics | FabClientStatistics:
        return self.inner.statistics()

    async def query(self, objects: Objects, method: str, arg: Any = None) -> Any:
        """``QUClient.query``; a guarded query's argument in this mount's envelope, with
        the publication tokens the asking task reads with (``fs/clients/reading.py``)."""
        if method in GUARDED_QUERIES:
            arg = tag_query(arg, self.mount, TOKENS.get())
        elif method == ASK_PUBLISH and isinstance(arg, dict):
            arg = {**arg, MOUNT: self.mount}  # the reader the holder publishes for
        return await self.inner.query(objects, method, arg)

    async def update(self, objects: Objects, method: str, arg: Any = None) -> Any:
        """``QUClient.update``; an ``fs`` update's argument map names this mount."""
        if isinstance(arg, dict) and method.startswith("fs."):
            arg = {**arg, MOUNT: self.mount}
        return await self.inner.update(objects, method, arg)

    async def settle(self, objects: Objects) -> None:
        await self.inner.settle(objects)

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        return await self.inner.query_at(oid, method, arg)

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        return await self.inner.query_many_at(objects, method, arg)
