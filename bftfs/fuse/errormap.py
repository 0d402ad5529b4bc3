"""What a failed handler's exception means to the kernel, exception groups included.

The file system runs parts of one system call concurrently (a listing's stats, a flush's
blocks) in trio nurseries, and trio's nurseries raise an :class:`ExceptionGroup` even for
one failure (``strict_exception_groups``).  A group that reached the FUSE handler was
answered as "unexpected ExceptionGroup" (EIO, and never retried by a ``hard`` mount, issue
60): :func:`unwrap` turns a group whose failures are all the file system's own answers into
the one answer they mean, so the handler maps it as if it had been raised alone.
"""

from __future__ import annotations

from bftfs.fs.errors import FsError, NoSpace, OverQuota, Unavailable
from bftfs.outcome import ClusterUnavailable, QuotaExceeded, StorageFull, leaves


def as_fs_error(e: BaseException) -> FsError | None:
    """``e`` as the file system's answer: itself, a protocol client's outcome translated
    as ``fs/clients/calls.py`` does (quota, space, else unavailable), or None (anything else)."""
    if isinstance(e, FsError):
        return e
    if isinstance(e, QuotaExceeded):
        return OverQuota(str(e))
    if isinstance(e, StorageFull):
        return NoSpace(str(e))
    if isinstance(e, ClusterUnavailable):
        return Unavailable(f"{type(e).__name__}: {e}")
    return None


def unwrap(e: BaseException) -> BaseException:
    """The one exception ``e`` stands for: a group whose leaves are all answers of the file
    system (:func:`as_fs_error`) becomes the first :class:`Unavailable` among them (the
    call may succeed when tried again: a ``hard`` mount does) or else the first of them; a
    group holding anything else (a bug, a cancellation) is returned as it is, and so is
    anything that is not a group."""
    if not isinstance(e, BaseExceptionGroup):
        return e
    found = [as_fs_error(x) for x in leaves(e)]
    answers = [x for x in found if x is not None]
    if not answers or len(answers) != len(found):
        return e
    for x in answers:
        if isinstance(x, Unavailable):
            return x
    return answers[0]
