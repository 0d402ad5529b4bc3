"""The limits and constants of the file system's objects: reserved object ids, the largest
names, values, sizes and times a method accepts, flag bits and type codes.

Every node checks a client's argument against these (:mod:`bftfs.fsobjects.state`), and
clients check the same limits first to answer quickly.  They are part of the replicated
state machine: a node with other values would refuse what its peers accept, so they
depend on no configuration and change only with the wire version.
"""

from __future__ import annotations

import stat as st

#: Object id of the root directory (the FUSE root inode).
ROOT = 1
#: Object ids are 63-bit and never 0; ROOT is reserved.
MAX_OID = (1 << 63) - 1
#: The cluster's snapshot list (``bftfs snapshot``): named moments retention never
#: reclaims.  No file or directory is ever made with this id (clients draw ids below it,
#: servers refuse it).
SNAPSHOTS = MAX_OID
#: Most snapshots a cluster keeps (each pins the versions current at its moment).
MAX_SNAPSHOTS = 256
SNAPSHOT_NAME_MAX = 64
NAME_MAX = 255
#: Longest symlink target (Linux PATH_MAX).
PATH_MAX = 4096
#: Most hard links to one file (ext4 uses 65000).
LINK_MAX = 65000
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
#: All extended attributes of one object together (the object is replicated on n servers).
XATTR_TOTAL_MAX = 256 * 1024
#: Largest content kept inline in an attribute object ("Small files inline",
#: :mod:`bftfs.fsobjects.data`).
INLINE_MAX = 64 * 1024
#: Bytes sealed inline content has beyond the file's size in a cluster whose mounts encrypt
#: contents (a nonce and a tag: ``bftfs.crypto.SEAL_OVERHEAD``, docs/confidentiality.md).
SEALED_EXTRA = 64
#: Largest file size (block indices stay far inside 64 bits for any block size).
MAX_SIZE = 1 << 50
#: Most byte ranges a file's record of written data (``w``) keeps (:mod:`bftfs.fsobjects.ranges`).
MAX_EXTENTS = 32
#: Times are integer nanoseconds since the epoch in [MIN_TIME, MAX_TIME]: the range ext4
#: stores (32-bit signed seconds plus two epoch bits), 1901-12-13T20:45:52Z to
#: 2446-05-10T22:38:55.999999999Z.  Negative values are msgpack int64, values past 2**63 - 1
#: (2262) uint64; both encode canonically.  Anything else is refused (EINVAL).
MIN_TIME = -(1 << 31) * 1_000_000_000
MAX_TIME = ((1 << 34) - (1 << 31)) * 1_000_000_000 - 1
#: Largest per-file block size ``bs`` a server records (bftfs.config.MAX_BLOCK_SIZE: the
#: object methods depend on no configuration).
MAX_FILE_BLOCK = 4 * 1024**2
#: Version counters (``v``).
MAX_COUNTER = (1 << 63) - 1
MAX_ID = (1 << 32) - 1

XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

#: Entry type codes: the S_IFMT bits shifted down (4 = directory, 8 = regular, 10 = symlink).
DIR_TYPE = st.S_IFDIR >> 12
#: File types an attribute object may have (everything but a directory).
FILE_TYPES = frozenset({st.S_IFREG, st.S_IFLNK, st.S_IFCHR, st.S_IFBLK, st.S_IFIFO, st.S_IFSOCK})

#: Largest PASIS block Time a file records (``bt``: 8 unsigned bytes, rw/timestamp.py).
MAX_BLOCK_TIME = (1 << 64) - 1
#: The argument keys of the updates that lock others out until a time (a write lease runs
#: from ``now``; later writers must write above ``bt``): nodes refuse a client's own update
#: whose value lies more than the PASIS write skew past their clock (``Method.clocks``).
CLOCKS = ("now", "bt")

#: Longest write lease a client may take (ns): a flush that needs longer renews it.
MAX_LEASE = 120 * 10**9
