"""The file system's calls to the servers, and the clients under them.

- :mod:`.protocols`: the faces of the protocol clients (:class:`MetadataClient`,
  :class:`EngineClient`, :class:`BlockClient`), which every wrapper below shows too;
- :mod:`.calls`: :class:`Meta`, the one way the file system's parts reach the servers
  (error translation, statistics, retries, placement);
- :mod:`.seal`: the encryption boundary of a sealed cluster (:class:`Seal`), and
  :mod:`.sealed`: the clients behind it (:func:`wrap_clients`);
- :mod:`.mounttag`: this mount's number on its requests (:class:`MountTagged`);
- :mod:`.switch`: the clients a session holds across generation changes.

What a call must follow, sent before it (``CallOrder``), is not here: it is built on parts
above the calls (the creates, write-back's held-back work), so it sits above them, in
``fs/callorder.py``; ``Meta`` declares the hook it plugs into (``CallGate``).
"""

from bftfs.fs.clients.calls import (
    CHUNK,
    ENTRY_METHODS,
    FLUSH_ATTEMPTS,
    LEASE_NS,
    MAX_ATTEMPTS,
    CallGate,
    IdTaken,
    LeaseHeld,
    Meta,
    OutOfDate,
)
from bftfs.fs.clients.mounttag import MountTagged
from bftfs.fs.clients.protocols import BlockClient, EngineClient, MetadataClient
from bftfs.fs.clients.seal import SEALED_NAME_MAX, Seal, SealBroken
from bftfs.fs.clients.sealed import SealedBlocks, SealedObjects, wrap_clients
from bftfs.fs.clients.switch import Switch, SwitchingQU, SwitchingRW

__all__ = [
    "CHUNK",
    "ENTRY_METHODS",
    "FLUSH_ATTEMPTS",
    "LEASE_NS",
    "MAX_ATTEMPTS",
    "SEALED_NAME_MAX",
    "BlockClient",
    "CallGate",
    "EngineClient",
    "IdTaken",
    "LeaseHeld",
    "Meta",
    "MetadataClient",
    "MountTagged",
    "OutOfDate",
    "Seal",
    "SealBroken",
    "SealedBlocks",
    "SealedObjects",
    "Switch",
    "SwitchingQU",
    "SwitchingRW",
    "wrap_clients",
]
