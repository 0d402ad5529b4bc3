"""bftfs: a Byzantine fault-tolerant file system (PASIS blocks, Q/U metadata, FUSE)."""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the wire format; a frame with another version is rejected.
WIRE_VERSION = 5
