"""The calling mount's number on every file-system request (issue 33).

A lease's holder is a client *and* one of its mounts (``fsobjects/leases.py``): two mounts
of one client identity (two laptops with the same bundle) must recall each other's leases
as two clients do, or one would answer from a lease while the other changed what it
covers.  The nodes know only the principal a request is signed by, so each mount says
which one it is: ``lm`` in every ``fs`` update's argument map, and an envelope around the
argument of every query an exclusive lease guards.

This sits right above the Q/U client, below the encryption boundary (``fs/clients/seal.py``), so
what is sealed is the argument the methods take and the envelope stays outside it."""

from __future__ import annotations

from typing import Any

from bftfs.fsobjects.leases import MOUNT, tag_query
from bftfs.fsobjects.methods import GUARDED_QUERIES


class MountTagged:
    """A Q/U client whose ``fs`` requests say which mount sends them; everything else is
    the client's own."""

    def __init__(self, qu: Any, mount: int = 0) -> None:
        """``mount``: this mount's number (``Meta.lease_token``; 0 until it is known)."""
        self._qu = qu
        self.mount = mount

    def __getattr__(self, name: str) -> Any:
        return getattr(self._qu, name)

    async def query(self, objects: Any, method: str, arg: Any = None) -> Any:
        """``QUClient.query``; a guarded query's argument in this mount's envelope."""
        if method in GUARDED_QUERIES:
            arg = tag_query(arg, self.mount)
        return await self._qu.query(objects, method, arg)

    async def update(self, objects: Any, method: str, arg: Any = None) -> Any:
        """``QUClient.update``; an ``fs`` update's argument map names this mount."""
        if isinstance(arg, dict) and method.startswith("fs."):
            arg = {**arg, MOUNT: self.mount}
        return await self._qu.update(objects, method, arg)
