"""bftfs: a Byzantine fault-tolerant file system (PASIS blocks, Q/U metadata, FUSE)."""

from __future__ import annotations

__version__ = "0.2.0"

#: Version of the wire format (``net/session.py``): a node and a client speak it and the
#: one before it, for the length of a rolling upgrade (``net/wires.py``); a hello of any
#: other version is refused.  Version 6 (0.2.0): hellos carry the package version.
WIRE_VERSION = 6
#: Version of a node's store layout, stamped in the store (``node/storeformat.py``): a
#: node refuses a store of a newer format and migrates an older one at start.  Format 2
#: (after 0.2.0): a version's answer may be stored split (``qu/schema.py``, ``"nk"``).
STORE_FORMAT = 2
