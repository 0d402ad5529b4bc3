"""Principal identifiers shared by every layer.

Nodes and clients are *principals*: each has a key pair and an integer id that appears in
frames, in PASIS timestamps (the writer) and in Q/U timestamps (the client id).  Nodes use
``0 .. n-1`` so that "node k" in the papers is literally ``NodeId(k)``; clients start at
``CLIENT_ID_BASE`` so the two ranges can never collide and an id alone says which kind of
principal it is.
"""

from __future__ import annotations

from typing import NewType

PrincipalId = NewType("PrincipalId", int)
NodeId = PrincipalId
ClientId = PrincipalId

#: First client id; ids below it are node ids.
CLIENT_ID_BASE = 1 << 16


def is_node(pid: int) -> bool:
    """Whether ``pid`` names a storage node (as opposed to a client)."""
    return 0 <= pid < CLIENT_ID_BASE


def client_id(index: int) -> ClientId:
    """The principal id of the client whose ``id`` in the configuration is ``index`` (its
    position in files written before ids were explicit)."""
    return ClientId(CLIENT_ID_BASE + index)
