"""File-system errors, each carrying the errno the FUSE layer answers (docs/fs-api.md).

STYLE.md section 3: ``FUSEError`` is raised only in ``bftfs/fuse/``; below it every refusal
is an :class:`FsError` whose ``errno`` the FUSE layer passes on.  A Q/U method refused by the
servers' validation (seed L1918-1920: narrow methods confine Byzantine clients) arrives as
``MethodRefused(code)``; :func:`from_refusal` turns its code into the matching subclass, so a
refusal decided by ``b + 1`` servers reaches the application as the errno POSIX prescribes.
"""

from __future__ import annotations

import errno as _errno

from bftfs import fsobjects
from bftfs.qu.objects import MethodRefused


class FsError(Exception):
    """A file-system operation failed; ``errno`` says how (EIO unless a subclass says)."""

    errno = _errno.EIO

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)


class NotFound(FsError):
    errno = _errno.ENOENT


class Removed(NotFound):
    """The directory operated in was removed (ENOENT to a program; a name the kernel
    cached may have led there, see ``Operations.lookup``)."""


class Exists(FsError):
    errno = _errno.EEXIST


class NotEmpty(FsError):
    errno = _errno.ENOTEMPTY


class NotDir(FsError):
    errno = _errno.ENOTDIR


class IsDir(FsError):
    errno = _errno.EISDIR


class Invalid(FsError):
    errno = _errno.EINVAL


class NameTooLong(FsError):
    errno = _errno.ENAMETOOLONG


class NoAttr(FsError):
    errno = _errno.ENODATA


class Busy(FsError):
    errno = _errno.EBUSY


class Unavailable(FsError):
    """Quorum unavailable or a block unrecoverable: the cluster cannot answer now."""

    errno = _errno.EIO


class ReadOnly(FsError):
    errno = _errno.EROFS


class Permission(FsError):
    errno = _errno.EPERM


class TooManyLinks(FsError):
    errno = _errno.EMLINK


class CrossDevice(FsError):
    errno = _errno.EXDEV


class TooBig(FsError):
    """An extended attribute value beyond XATTR_SIZE_MAX, or a file beyond the size limit."""

    errno = _errno.E2BIG


class NoSpace(FsError):
    """No room: the extended attributes of one object would exceed their total bound, or
    more than ``b`` nodes refused a write because their store is full
    (``bftfs.outcome.StorageFull``; deleting files gives the space back)."""

    errno = _errno.ENOSPC


class OverQuota(NoSpace):
    """More than ``b`` nodes refused a write because this client is at its storage quota
    there (``bftfs.outcome.QuotaExceeded``, ``[limits] quota_fraction``): EDQUOT, as a
    disk quota does; removing this client's files gives the space back.  A kind of
    :class:`NoSpace`, so whatever copes with a full store copes with it too."""

    errno = _errno.EDQUOT


class StaleView(FsError):
    """The kernel acted on a view of a name that is out of date (a create of a name that
    exists, decided on a cached negative entry): ESTALE makes the kernel's path walk run
    again with fresh lookups (``LOOKUP_REVAL``), which then finds the entry."""

    errno = _errno.ESTALE


class Forgotten(FsError):
    """The object a handle names was removed and then forgotten by the nodes
    (``docs/qu.md``, "Forgetting removed objects"): ESTALE, as NFS answers for a handle
    whose file is gone.  Its id never names another object (issue 31)."""

    errno = _errno.ESTALE


class BadHandle(FsError):
    """A file handle that is not open."""

    errno = _errno.EBADF


class WouldBlock(FsError):
    """Another holder's lock conflicts (``fcntl`` ``F_SETLK``, ``flock`` with ``LOCK_NB``)."""

    errno = _errno.EAGAIN


class NoLocks(FsError):
    """A file's lock object is full (``fsobjects.locks.MAX_LOCKS``), or the file takes no
    locks: a file of a snapshot under a live mount's ``.snapshots`` (``fs/snapinodes.py``)."""

    errno = _errno.ENOLCK


class LockLost(FsError):
    """This mount's locks on a file lapsed (its lease was not renewed in time: cut off from
    the cluster): the application is told at its next lock operation on the file, as NFS
    does after a lost lock, instead of believing it still holds them."""

    errno = _errno.EIO


#: Refusal codes of :mod:`bftfs.fsobjects` -> error class.
_BY_CODE: dict[str, type[FsError]] = {
    "not-found": NotFound,
    "removed": Removed,
    "exists": Exists,
    "not-empty": NotEmpty,
    "not-dir": NotDir,
    "is-dir": IsDir,
    "invalid": Invalid,
    "name-too-long": NameTooLong,
    "no-attr": NoAttr,
    "busy": Busy,
    "too-many-links": TooManyLinks,
    "too-big": TooBig,
    "no-space": NoSpace,
    "permission": Permission,
    "forgotten": Forgotten,
    "conflict": WouldBlock,
    "no-locks": NoLocks,
}


def from_refusal(code: str, message: str = "") -> FsError:
    """The error for a Q/U refusal ``code`` (unknown codes - a method error, a malformed
    request - are EIO: they mean a bug or a misbehaving peer, not a POSIX condition)."""
    cls = _BY_CODE.get(code, FsError)
    return cls(f"{code}: {message}" if message else code)


def check_name(name: bytes, name_max: int) -> None:
    """Refuse an entry name the servers would refuse (``fsobjects.check_name``), or one
    longer than ``name_max`` (shorter in a sealed cluster, ``fs/clients/seal.py``), as FsError."""
    try:
        fsobjects.check_name(name)
    except MethodRefused as e:
        raise from_refusal(e.code, e.message) from None
    if len(name) > name_max:
        raise NameTooLong()
