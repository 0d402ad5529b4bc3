"""Build hook: compile bftfs's protocol core with mypyc (all other metadata: pyproject.toml).

The modules below run for every request a node serves and every round the FUSE daemon
makes: timestamps, histories, classification, message parsing, the Q/U node and client,
the transport and the node's store.  mypyc turns their typed Python into C extensions
(native classes, direct calls), which cut the CPU of a Q/U round by about a quarter on the
2-core machines we measure on (docs/performance.md).  The sources stay plain Python that
runs as it is: ``BFTFS_PURE=1`` at install time builds nothing, and without the extensions
every module imports from its ``.py`` file.

A compiled module shadows its ``.py`` file, so an edited module runs only once it is built
again: ``scripts/setup.sh`` (every ``make`` target) rebuilds when a listed source is newer
than the last build.
"""

import os

from setuptools import setup

#: Compiled modules, in the order mypyc is given them (all of them are one group).
COMPILED = [
    "bftfs/crypto.py",
    "bftfs/transport.py",
    "bftfs/node/store.py",
    "bftfs/qu/blobs.py",
    "bftfs/qu/canon.py",
    "bftfs/qu/classify.py",
    "bftfs/qu/client.py",
    "bftfs/qu/core.py",
    "bftfs/qu/history.py",
    "bftfs/qu/messages.py",
    "bftfs/qu/node.py",
    "bftfs/qu/replica.py",
    "bftfs/qu/schema.py",
    "bftfs/qu/timestamp.py",
]


def _extensions() -> list:
    if os.environ.get("BFTFS_PURE") == "1":
        return []
    from mypyc.build import mypycify

    return mypycify(["--ignore-missing-imports", *COMPILED], group_name="bftfs_core")


setup(ext_modules=_extensions())
