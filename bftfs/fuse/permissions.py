"""The kernel's permission check (``default_permissions``) redone by the daemon.

A regular file's attributes may be cached by the kernel longer than the attribute timeout
(leases, ``acregmax``), so the kernel's own check before an ``open`` may rest on an old
mode: ``Operations.open`` checks the caller again on the mode it has just read."""

from __future__ import annotations

import os
from typing import Any

import pyfuse3

from bftfs.fs.attrs import Attr

#: The open-flags bit of ``execve``'s open (Linux ``__FMODE_EXEC``; FUSE passes it on).
FMODE_EXEC = 0x20


def permits(a: Attr, ctx: Any, flags: int) -> bool:
    """Whether the mode bits of ``a`` let the caller of ``ctx`` open it with ``flags``, as
    the kernel's own check (``default_permissions``): owner, group (supplementary groups
    too) or others, root always."""
    if ctx.uid == 0:
        return True
    acc = flags & os.O_ACCMODE
    need = (4 if acc != os.O_WRONLY else 0) | (2 if acc != os.O_RDONLY or flags & os.O_TRUNC else 0)
    if flags & FMODE_EXEC:  # execve's open: the kernel asks for execute permission only
        need = 1
    if a.uid == ctx.uid:
        bits = a.mode >> 6
    else:
        in_group = a.gid == ctx.gid
        if not in_group and ((a.mode >> 3) ^ a.mode) & need:  # group and others differ
            try:
                in_group = a.gid in pyfuse3.get_sup_groups(ctx.pid)
            except OSError:  # the process is gone: nothing to protect
                return True
        bits = a.mode >> 3 if in_group else a.mode
    return bits & need == need
