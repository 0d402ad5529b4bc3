"""The encryption boundary of a mount: file contents sealed before any node sees them.

A sealed cluster (one with a volume key, ``[cluster] volume_key_id``) keeps every file's
contents encrypted on the nodes (docs/confidentiality.md).  The file system's parts work on
plaintext; ``sealed.py``'s :func:`~bftfs.fs.clients.sealed.wrap_clients` puts two thin
wrappers between them and the protocol clients, each calling the :class:`Seal` here, so
that nothing below (nodes, Q/U, PASIS, lazy verification, scrub, history, garbage
collection) sees or needs plaintext:

- ``SealedBlocks`` over the PASIS client: a block is sealed before it is written
  (and erasure-coded) and opened after it is read (decoded and validated);
- ``SealedObjects`` over the Q/U client: an inline file's bytes (``i``), entry
  names (deterministically, so the nodes still refuse a duplicate), symbolic link targets
  and extended attribute names (likewise) and values are sealed in the arguments that
  carry them and opened in every answer that does.

A block or inline content written empty stays empty (an empty block reads as zeros: a
cleared gap, a given-back block), so the paths that write nothing need no key.  A value
that does not open (bits flipped by more than ``b`` nodes, a client writing garbage) is
:class:`SealBroken`, EIO: never returned as plaintext.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import stat
from collections.abc import Iterable, Sequence
from typing import Any

from bftfs import fsobjects as obj
from bftfs.crypto import (
    SIV_SIZE,
    SealError,
    VolumeKey,
    seal,
    seal_buffer,
    seal_into,
    siv_open,
    siv_seal,
    unseal,
    unseal_buffer,
    unseal_in_place,
)
from bftfs.fs.errors import FsError, NameTooLong
from bftfs.fsobjects.dirents import Entries, all_entries
from bftfs.qu.objects import MethodRefused

log = logging.getLogger(__name__)

#: The longest name a sealed cluster takes: its sealed form (a 16-byte synthetic IV and
#: the name's bytes, in unpadded URL-safe base64: no NUL, no ``/``) must fit the nodes'
#: 255 bytes.  eCryptfs, sealing names the same way, takes 143.
SEALED_NAME_MAX = (obj.NAME_MAX * 3) // 4 - SIV_SIZE

#: The additional data of inline content: a block's (its id) can never be taken for it.
_INLINE_AAD = b"bftfs-inline"
#: An extended attribute value's additional data: this label and the attribute's name.
_XATTR_AAD = b"bftfs-xattr:"
#: A symbolic link target's additional data.
_TARGET_AAD = b"bftfs-symlink"
#: A name's additional data: this label and its directory's id (equal names in two
#: directories do not look alike).
_NAME_AAD = b"bftfs-name:"
#: An extended attribute name's additional data: this label and its object's id.
_XATTR_NAME_AAD = b"bftfs-xattr-name:"
#: The updates naming one entry ``name`` of directory ``p``.
_ENTRY_METHODS = frozenset(
    {"fs.create", "fs.createwrite", "fs.mkdir", "fs.link", "fs.unlink", "fs.rmdir"}
)
#: The update methods whose arguments may carry inline content (``i``), at top level or in
#: ``files`` (``fs.createmany``, ``fs.writemany``).
_INLINE_METHODS = frozenset(
    {"fs.write", "fs.writemany", "fs.setattr", "fs.createwrite", "fs.createmany"}
)


class SealBroken(FsError):
    """Sealed contents that do not open under the volume key (EIO): corrupted, or written
    under another key."""


class Seal:
    """The volume key's contents key, and the two directions of the boundary.  After key
    rotations (``bftfs rotate-key``) values are sealed under the current key and opened
    under whichever of the current and ``previous`` keys they were sealed under."""

    def __init__(self, volume: VolumeKey, previous: Sequence[VolumeKey] = ()) -> None:
        self._key = volume.subkey(b"bftfs-contents")
        self._keys = [self._key, *(k.subkey(b"bftfs-contents") for k in previous)]
        # Names under the cluster's first key, which rotations keep: a name must seal the
        # same whatever key is current, or the nodes could not refuse a duplicate.
        first = previous[-1] if previous else volume
        self._name_iv = first.subkey(b"bftfs-names-iv")
        self._name_stream = first.subkey(b"bftfs-names-stream")

    def _unseal(self, data: bytes, aad: bytes) -> bytes:
        """``data`` opened under the first key it opens under (the current one first: what
        is written now; an older one for what was written before a rotation).

        Raises:
            SealError: under none of them.
        """
        for key in self._keys[:-1]:
            try:
                return unseal(key, data, aad)
            except SealError:
                continue
        return unseal(self._keys[-1], data, aad)

    @classmethod
    def of(cls, config: Any) -> Seal | None:
        """The seal of ``config``'s cluster: None for an unencrypted one (no
        ``volume_key_id``: made before issue 38, or ``--no-seal``), else the volume key
        read from the cluster directory, checked against the id.

        Raises:
            KeyFileError: the cluster is sealed but a key file (the current one or one from
                before a rotation) is missing, readable by others, or not the key the
                configuration names.
        """
        key_id = getattr(config, "volume_key_id", None)
        if key_id is None:
            return None
        previous = [
            VolumeKey.load(config.previous_volume_key_path(old), old)
            for old in config.previous_volume_key_ids
        ]
        return cls(VolumeKey.load(config.volume_key_path, key_id), previous)

    # Blocks ---------------------------------------------------------------------------------

    def seal_block(self, block: int, data: bytes | bytearray) -> bytes | bytearray:
        """Block ``block``'s plaintext sealed, bound to its id (empty stays empty); in
        place (:func:`~bftfs.crypto.seal_buffer`: a block is large)."""
        if not data:
            return b""
        return seal_buffer(self._key, data, _block_aad(block))

    def seal_into(self, block: int, data: bytes | bytearray, out: memoryview) -> None:
        """:meth:`seal_block` of non-empty ``data`` written into ``out`` (exactly
        ``SEAL_OVERHEAD + len(data)`` bytes: :func:`~bftfs.crypto.seal_into`)."""
        seal_into(self._key, data, _block_aad(block), out)

    def open_block(
        self, block: int, data: bytes | bytearray, *, in_place: bool = False
    ) -> bytes | bytearray:
        """Block ``block``'s plaintext from what the nodes returned.

        ``in_place``: ``data`` is a bytearray that nothing else holds (a block as the PASIS
        read joined it, ``erasure.decode``), opened in its own buffer with the last key
        tried (the current one when there is one key); earlier keys are tried on it
        without changing it, since a failed attempt in place zeroes the buffer.

        Raises:
            SealBroken: it does not open (or was sealed as another block).
        """
        if not data:
            return b""
        aad = _block_aad(block)
        try:
            for key in self._keys[:-1]:
                # The current key first (what is written now), then older ones.
                with contextlib.suppress(SealError):
                    return unseal_buffer(key, data, aad)
            if in_place and isinstance(data, bytearray):
                return unseal_in_place(self._keys[-1], data, aad)
            return unseal_buffer(self._keys[-1], data, aad)
        except SealError as e:
            raise SealBroken(f"block {block:#x}: {e}") from None

    # Inline content ---------------------------------------------------------------------------

    def seal_inline(self, data: bytes) -> bytes:
        """An inline file's bytes sealed (empty stays empty)."""
        if not data:
            return b""
        return seal(self._key, data, _INLINE_AAD)

    def open_inline(self, data: bytes) -> bytes:
        """An inline file's bytes from a state or answer.

        Raises:
            SealBroken: they do not open.
        """
        if not data:
            return b""
        try:
            return self._unseal(data, _INLINE_AAD)
        except SealError as e:
            raise SealBroken(f"inline content: {e}") from None

    # Extended attribute values -----------------------------------------------------------------

    def seal_xattr(self, name: bytes, value: bytes) -> bytes:
        """An extended attribute's value sealed, bound to its name (empty stays empty)."""
        if not value:
            return b""
        return seal(self._key, value, _XATTR_AAD + name)

    def open_xattr(self, name: bytes, value: bytes) -> bytes:
        """An extended attribute's value from an answer or a past state.

        Raises:
            SealBroken: it does not open (or was sealed under another name).
        """
        if not value:
            return b""
        try:
            return self._unseal(value, _XATTR_AAD + name)
        except SealError as e:
            raise SealBroken(f"extended attribute {name!r}: {e}") from None

    # Symbolic link targets ----------------------------------------------------------------------

    def seal_target(self, target: bytes) -> bytes:
        """A symbolic link's target sealed."""
        return seal(self._key, target, _TARGET_AAD)

    def open_target(self, target: bytes) -> bytes:
        """A symbolic link's target from ``fs.readlink`` or a past state.

        Raises:
            SealBroken: it does not open.
        """
        try:
            return self._unseal(target, _TARGET_AAD)
        except SealError as e:
            raise SealBroken(f"symbolic link target: {e}") from None

    def _seal_symlink(self, arg: dict[str, Any]) -> dict[str, Any]:
        """``fs.create``'s argument of a symlink with its target sealed and its length as
        ``tl``.  A target the nodes would refuse (empty, with a NUL, too long) is sent as
        it is, to be refused with the usual error: nothing of it is stored."""
        target = arg.get("t")
        mode = arg.get("mode")
        if not isinstance(mode, int) or not stat.S_ISLNK(mode) or not isinstance(target, bytes):
            return arg
        if not target or b"\0" in target or len(target) > obj.PATH_MAX:
            return arg
        return dict(arg, t=self.seal_target(target), tl=len(target))

    # Names ----------------------------------------------------------------------------------------

    def seal_name(self, parent: int, name: bytes) -> bytes:
        """Entry ``name`` of directory ``parent`` sealed deterministically (the same name
        in the same directory always seals alike, so the nodes still refuse a duplicate),
        as unpadded URL-safe base64 (a legal name).  A name the nodes would refuse anyway
        ('', '.', '..', '/', NUL, over 255 bytes) is left as it is, to be refused as before.

        Raises:
            NameTooLong: a legal name longer than :data:`SEALED_NAME_MAX`.
        """
        try:
            obj.check_name(name)
        except MethodRefused:
            return name
        return self._seal_as_name(name, _name_aad(parent))

    def _seal_as_name(self, name: bytes, aad: bytes) -> bytes:
        if len(name) > SEALED_NAME_MAX:
            raise NameTooLong()
        sealed = siv_seal(self._name_iv, self._name_stream, name, aad)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=")

    def _open_as_name(self, sealed: bytes, aad: bytes) -> bytes:
        raw = base64.urlsafe_b64decode(sealed + b"=" * (-len(sealed) % 4))
        return siv_open(self._name_iv, self._name_stream, raw, aad)

    def seal_xattr_name(self, oid: int, name: bytes) -> bytes:
        """Extended attribute ``name`` of object ``oid`` sealed deterministically (found
        and replaced by name, as entries are); an illegal name is left to the nodes.

        Raises:
            NameTooLong: a legal name longer than :data:`SEALED_NAME_MAX`.
        """
        try:
            obj.check_xattr_name(name)
        except MethodRefused:
            return name
        return self._seal_as_name(name, _XATTR_NAME_AAD + oid.to_bytes(8, "big"))

    def open_xattr_name(self, oid: int, sealed: bytes) -> bytes:
        """An extended attribute's name from its sealed form.

        Raises:
            SealBroken: not a name sealed for this object under this cluster's key.
        """
        try:
            return self._open_as_name(sealed, _XATTR_NAME_AAD + oid.to_bytes(8, "big"))
        except (ValueError, SealError) as e:
            raise SealBroken(f"xattr name {sealed[:40]!r} of {oid:#x}: {e}") from None

    def open_xattrs(self, oid: int, x: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """A past state's extended attributes (sealed name -> sealed value), opened; one
        whose name does not open is left out and logged."""
        out = {}
        for sealed, value in x.items():
            try:
                name = self.open_xattr_name(oid, sealed)
            except SealBroken as err:
                log.warning("object %#x: an extended attribute left out: %s", oid, err)
                continue
            out[name] = self.open_xattr(name, value)
        return out

    def open_xattr_names(self, oid: int, names: Iterable[bytes]) -> list[bytes]:
        """``fs.listxattr``'s answer opened (sorted; one that does not open left out)."""
        return sorted(self.open_xattrs(oid, dict.fromkeys(names, b"")))

    def open_name(self, parent: int, sealed: bytes) -> bytes:
        """An entry's name from its sealed form.

        Raises:
            SealBroken: not a name sealed in this directory under this cluster's key.
        """
        try:
            return self._open_as_name(sealed, _name_aad(parent))
        except (ValueError, SealError) as e:
            raise SealBroken(f"name {sealed[:40]!r} in directory {parent:#x}: {e}") from None

    def open_entries(self, parent: int, e: Any) -> dict[int, bytes]:
        """A directory's entries (a state's ``e`` or readdir's buckets) with their names
        opened, packed as a state's ``e``.  An entry whose name does not open (written by
        a client without the key, or garbage) is left out and logged: one bad name must
        not hide the rest of the directory."""
        opened = Entries({})
        for name, entry in all_entries(e).items():
            try:
                opened[self.open_name(parent, name)] = entry
            except SealBroken as err:
                log.warning("directory %#x: an entry left out: %s", parent, err)
        return opened.packed()

    def _seal_entry_names(self, method: str, arg: dict[str, Any]) -> dict[str, Any]:
        """An update's argument with the entry names it carries sealed (a copy)."""
        if method in _ENTRY_METHODS:
            return self._seal_key(arg, arg.get("p"), "name")
        if method == "fs.rename":
            arg = self._seal_key(arg, arg.get("sp"), "sn")
            return self._seal_key(arg, arg.get("dp"), "dn")
        files = arg.get("files")
        if method in ("fs.createmany", "fs.mkdirmany", "fs.unlinkmany") and isinstance(files, list):
            p = arg.get("p")
            return dict(arg, files=[self._seal_key(f, p, "name") for f in files])
        return arg

    def _seal_key(self, arg: Any, parent: Any, name_key: str, *, xattr: bool = False) -> Any:
        """``arg`` with its name at ``name_key`` sealed in directory ``parent`` (with
        ``xattr``: an extended attribute's name, of object ``parent``)."""
        name = arg.get(name_key) if isinstance(arg, dict) else None
        if not isinstance(parent, int) or isinstance(parent, bool) or not isinstance(name, bytes):
            return arg
        sealed = self.seal_xattr_name(parent, name) if xattr else self.seal_name(parent, name)
        return dict(arg, **{name_key: sealed})

    def seal_query(self, objects: Any, method: str, arg: Any) -> Any:
        """A query's argument with the name it looks up sealed (``fs.lookup``,
        ``fs.lookupstat``), or the extended attribute it reads (``fs.getxattr``)."""
        if method == "fs.lookup" and isinstance(arg, bytes):
            parent = objects[0] if isinstance(objects, list | tuple) else objects
            return self.seal_name(parent, arg) if _is_oid(parent) else arg
        if method == "fs.lookupstat" and isinstance(arg, dict):
            return self._seal_key(arg, arg.get("p"), "name")
        if method == "fs.getxattr" and isinstance(arg, bytes) and _is_oid(_first(objects)):
            return self.seal_xattr_name(_first(objects), arg)
        return arg

    def open_query(self, objects: Any, method: str, arg: Any, answer: Any) -> Any:
        """A query's ``answer`` opened: an extended attribute's value (``arg``: its plain
        name) or names, a directory's entries, a symbolic link's target, inline content."""
        if method == "fs.getxattr" and isinstance(answer, bytes) and isinstance(arg, bytes):
            return self.open_xattr(arg, answer)
        if method == "fs.listxattr" and isinstance(answer, list) and _is_oid(_first(objects)):
            return self.open_xattr_names(_first(objects), answer)
        if method == "fs.readdir" and isinstance(answer, dict) and _is_oid(objects):
            packed = self.open_entries(objects, answer.get("e", []))
            return dict(answer, e=[packed[i] for i in sorted(packed)])
        if method == "fs.readlink" and isinstance(answer, bytes):
            return self.open_target(answer)
        return self.open_answer(answer)

    # Update arguments and answers ------------------------------------------------------------

    def seal_argument(self, method: str, arg: Any, objects: Any = None) -> Any:
        """An update (on ``objects``) with the names, inline content, symlink target or
        extended attribute name and value its argument carries sealed (a copy; ``arg``
        unchanged).  ``fs.createwrite`` (and each file of ``fs.createmany``) then names
        the file's size as ``end``: the nodes take it from the content's length
        otherwise."""
        if isinstance(arg, dict):
            arg = self._seal_entry_names(method, arg)
        if method == "fs.create" and isinstance(arg, dict):
            return self._seal_symlink(arg)
        if method in ("fs.setxattr", "fs.removexattr") and isinstance(arg, dict):
            name, value = arg.get("name"), arg.get("value")
            if isinstance(value, bytes) and isinstance(name, bytes):
                arg = dict(arg, value=self.seal_xattr(name, value))  # bound to the plain name
            return self._seal_key(arg, _first(objects), "name", xattr=True)
        if method not in _INLINE_METHODS or not isinstance(arg, dict):
            return arg
        out = self._seal_one(arg, create=method == "fs.createwrite")
        files = arg.get("files")
        if method in ("fs.createmany", "fs.writemany") and isinstance(files, list):
            create = method == "fs.createmany"
            out["files"] = [self._seal_one(f, create=create) for f in files]
        return out

    def _seal_one(self, arg: Any, *, create: bool) -> Any:
        content = arg.get("i") if isinstance(arg, dict) else None
        if not isinstance(content, bytes | bytearray) or not content:
            return dict(arg) if isinstance(arg, dict) else arg
        out = dict(arg, i=self.seal_inline(bytes(content)))
        if create:
            out["end"] = len(content)
        return out

    def open_answer(self, answer: Any) -> Any:
        """``answer`` with the inline content of every file state in it opened: a copy of
        what changed (answers may be kept by the Q/U client), the same object where
        nothing did (most answers: no walk allocates for them)."""
        if isinstance(answer, dict):
            opened = None
            for key, value in answer.items():
                new = self.open_answer(value)
                if new is not value:
                    opened = opened if opened is not None else dict(answer)
                    opened[key] = new
            content = answer.get("i")
            if answer.get("k") == "f" and isinstance(content, bytes) and content:
                opened = opened if opened is not None else dict(answer)
                opened["i"] = self.open_inline(content)
            return answer if opened is None else opened
        if isinstance(answer, list):
            items = [self.open_answer(v) for v in answer]
            if any(new is not old for new, old in zip(items, answer, strict=True)):
                return items
        return answer

    def open_state(self, oid: int, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Object ``oid``'s past state (history) with its inline content, symbolic link
        target, extended attribute values and (a directory's) entry names opened."""
        if state is None:
            return None
        opened = dict(self.open_answer(state))
        if state.get("k") == "d" and "e" in state:
            opened["e"] = self.open_entries(oid, state["e"])
        target = state.get("t")
        if isinstance(target, bytes) and stat.S_ISLNK(int(state.get("mode", 0))):
            opened["t"] = self.open_target(target)
        xattrs = state.get("x")
        if isinstance(xattrs, dict):
            opened["x"] = self.open_xattrs(oid, xattrs)
        return opened


def _first(objects: Any) -> Any:
    """The object a one-object call is about (``objects`` is an id or a list of them)."""
    return objects[0] if isinstance(objects, list | tuple) and objects else objects


def _is_oid(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name_aad(parent: int) -> bytes:
    return _NAME_AAD + parent.to_bytes(8, "big")


def _block_aad(block: int) -> bytes:
    """A block's additional data: its id (data id and index), so a sealed block read in
    another's place does not open."""
    return b"bftfs-block" + int(block).to_bytes(16, "big")
