"""The namespace: names and the objects they lead to.

The wing's modules:

- ``namespace.py``: :class:`Names`, lookup, getattr, readlink, and the updates that create,
  link, remove and rename names (the face's one export);
- ``listing.py``: :class:`~bftfs.fs.names.listing.Listing`, readdir (one directory query,
  then the entries' attributes; in the mount under a lease);
- ``stale.py``: :class:`~bftfs.fs.names.stale.StaleNames`, the refusal of a stale name the
  kernel cached, and the kernel's walk again after one;
- ``held.py``: what this mount holds exclusively, whose kept state is the object's;
- ``rename.py``: :class:`~bftfs.fs.names.rename.Rename`, one rename as one atomic update.
"""

from bftfs.fs.names.namespace import Names

__all__ = ["Names"]
