"""bftfs: a Byzantine fault-tolerant file system (PASIS blocks, Q/U metadata, FUSE)."""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the wire format; a frame with another version is rejected.
WIRE_VERSION = 5
#: Version of a node's store layout, stamped in the store (``node/storeformat.py``): a
#: node refuses a store of a newer format and migrates an older one at start.
STORE_FORMAT = 1
