"""Identities, pairwise MAC keys and MACs.

Every node and client owns an X25519 key pair (pynacl).  The cluster configuration lists the
public keys; two principals derive the same 32-byte symmetric key by Diffie-Hellman, so no
shared secret file exists anywhere.  Frames and Q/U authenticators are MACed with keyed
BLAKE2b (16-byte tags): it is in the standard library, runs near memory speed and is a PRF
when keyed, which is all a MAC needs (the seeds used HMAC-MD5; see spec H.10).

This is the only module that imports nacl.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import crypto_scalarmult
from nacl.public import PrivateKey

from bftfs.ids import PrincipalId

#: Length of a MAC tag in bytes.
MAC_SIZE = 16
#: Length of a derived pairwise key in bytes.
KEY_SIZE = 32


class KeyFileError(Exception):
    """A private key file is missing, malformed, or readable by others."""


def mac(key: bytes, data: bytes | memoryview) -> bytes:
    """The MAC of ``data`` under ``key`` (keyed BLAKE2b, 16 bytes)."""
    return hashlib.blake2b(data, key=key, digest_size=MAC_SIZE).digest()


def mac_ok(key: bytes, data: bytes | memoryview, tag: bytes | memoryview) -> bool:
    """Whether ``tag`` is the MAC of ``data`` under ``key`` (constant-time compare)."""
    return hmac.compare_digest(mac(key, data), tag)


def derive(key: bytes, label: bytes, *parts: bytes) -> bytes:
    """A 32-byte subkey of ``key`` bound to ``label`` and ``parts`` (domain separation)."""
    h = hashlib.blake2b(key=key, digest_size=KEY_SIZE, person=label[:16].ljust(16, b"\0"))
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()


@dataclass(frozen=True)
class Identity:
    """One principal's key pair. ``private`` never leaves this process."""

    pid: PrincipalId
    private: bytes = field(repr=False)

    @classmethod
    def generate(cls, pid: PrincipalId) -> Identity:
        """A fresh random identity for ``pid``."""
        return cls(pid, bytes(PrivateKey.generate()))

    @property
    def public(self) -> bytes:
        """The 32-byte public key that goes into the cluster configuration."""
        return bytes(PrivateKey(self.private).public_key)

    def save(self, path: Path) -> None:
        """Write the private key to ``path`` with mode 0600 (created that way, never widened)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.private.hex().encode() + b"\n")
        finally:
            os.close(fd)

    @classmethod
    def load(cls, pid: PrincipalId, path: Path) -> Identity:
        """Read a private key written by :meth:`save`.

        Raises:
            KeyFileError: the file is missing, malformed, or group/other-accessible (a key
                others can read is no identity, so startup is refused rather than warned).
        """
        try:
            st = path.stat()
            raw = path.read_text().strip()
        except OSError as e:
            raise KeyFileError(f"cannot read private key {path}: {e.strerror}") from e
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"private key {path} is accessible by others (mode {st.st_mode & 0o777:o}); "
                "run: chmod 600 " + str(path)
            )
        try:
            private = bytes.fromhex(raw)
        except ValueError as e:
            raise KeyFileError(f"private key {path} is not hex") from e
        if len(private) != 32:
            raise KeyFileError(f"private key {path} has {len(private)} bytes, expected 32")
        return cls(pid, private)


def pairwise_key(me: Identity, peer_public: bytes) -> bytes:
    """The symmetric key ``me`` shares with the owner of ``peer_public``.

    X25519 gives both sides the same shared point; hashing it with both public keys in a
    canonical order binds the key to the pair and removes any algebraic structure.
    """
    shared = crypto_scalarmult(me.private, peer_public)
    a, b = sorted((me.public, peer_public))
    return derive(shared, b"bftfs-pairwise", a, b)


class KeyRing:
    """The pairwise keys of one principal with every principal it may talk to.

    Computed once at start-up (one scalar multiplication per peer), then a dictionary look-up
    per frame.  A peer not in the ring has no key: nothing it sends can be verified.
    """

    def __init__(self, me: Identity, peers: Mapping[PrincipalId, bytes]) -> None:
        self.me = me
        self._keys: dict[PrincipalId, bytes] = {
            pid: pairwise_key(me, pub) for pid, pub in peers.items() if pid != me.pid
        }
        # A principal also "shares" a key with itself (used for a node's own authenticator
        # entry in Q/U, where the seed's vector has one MAC per server including itself).
        self._keys[me.pid] = derive(me.private, b"bftfs-self")

    def key(self, peer: PrincipalId) -> bytes | None:
        """The key shared with ``peer``, or None when ``peer`` is unknown."""
        return self._keys.get(peer)

    def peers(self) -> Iterable[PrincipalId]:
        """Every principal this ring has a key for (itself included)."""
        return self._keys.keys()
