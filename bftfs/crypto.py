"""Identities, pairwise MAC keys and MACs.

Every node and client owns an X25519 key pair (pynacl).  The cluster configuration lists the
public keys; two principals derive the same 32-byte symmetric key by Diffie-Hellman, so no
shared secret file exists anywhere.  Frames and Q/U authenticators are MACed with keyed
BLAKE2b (16-byte tags): it is in the standard library, runs near memory speed and is a PRF
when keyed, which is all a MAC needs (the seeds used HMAC-MD5; see spec H.10).

A sealed cluster's file contents are encrypted by the mounts under a volume key no node
holds (:class:`VolumeKey`, :func:`seal`, :func:`unseal`; docs/confidentiality.md).

A backup of the private keys is sealed under a passphrase (:func:`seal_with_passphrase`:
Argon2id, then ``SecretBox``; ``bftfs keys export``).

This is the only module that imports nacl.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import (
    crypto_aead_aegis256_ABYTES,
    crypto_aead_aegis256_decrypt,
    crypto_aead_aegis256_encrypt,
    crypto_aead_aegis256_NPUBBYTES,
    crypto_scalarmult,
)
from nacl.exceptions import BadSignatureError, CryptoError

try:  # libsodium through pynacl's own cffi module: sealing a block in place (seal_buffer)
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - pynacl always ships it today
    _ffi = _lib = None
from nacl.public import PrivateKey
from nacl.pwhash import argon2id
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from bftfs.buffers import unfilled
from bftfs.ids import PrincipalId

#: Length of a MAC tag in bytes.
MAC_SIZE = 16
#: Length of a derived pairwise key in bytes.
KEY_SIZE = 32


#: Bytes a sealed value has beyond its plaintext: a random nonce and the AEAD's tag.
SEAL_OVERHEAD = crypto_aead_aegis256_NPUBBYTES + crypto_aead_aegis256_ABYTES
#: Length of a volume key's id (``[cluster] volume_key_id``).
KEY_ID_SIZE = 16


class KeyFileError(Exception):
    """A private key file is missing, malformed, or readable by others."""


class SealError(Exception):
    """A sealed value does not open under the key: tampered with, truncated, or sealed
    under another key."""


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
        save_secret(path, self.private)

    @classmethod
    def load(cls, pid: PrincipalId, path: Path) -> Identity:
        """Read a private key written by :meth:`save`.

        Raises:
            KeyFileError: the file is missing, malformed, or group/other-accessible (a key
                others can read is no identity, so startup is refused rather than warned).
        """
        return cls(pid, load_secret(path))


def save_secret(path: Path, secret: bytes) -> None:
    """Write a 32-byte secret as hex to ``path``, mode 0600 (created that way, never
    widened), in a directory of mode 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret.hex().encode() + b"\n")
    finally:
        os.close(fd)


def load_secret(path: Path) -> bytes:
    """Read a secret written by :func:`save_secret`.

    Raises:
        KeyFileError: the file is missing, malformed, or group/other-accessible.
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
        secret = bytes.fromhex(raw)
    except ValueError as e:
        raise KeyFileError(f"private key {path} is not hex") from e
    if len(secret) != KEY_SIZE:
        raise KeyFileError(f"private key {path} has {len(secret)} bytes, expected {KEY_SIZE}")
    return secret


#: Length of a deterministic sealing's synthetic IV (:func:`siv_seal`).
SIV_SIZE = 16


def _siv_keystream(key: bytes, iv: bytes, length: int) -> bytes:
    """``length`` bytes of keyed BLAKE2b in counter mode under ``iv``: a PRF's output
    blocks, a stream cipher whose IV the SIV construction never repeats for two
    different plaintexts."""
    blocks = [
        hashlib.blake2b(iv + counter.to_bytes(8, "big"), key=key, digest_size=64).digest()
        for counter in range(-(-length // 64))
    ]
    return b"".join(blocks)[:length]


def _siv(key: bytes, aad: bytes, data: bytes) -> bytes:
    h = hashlib.blake2b(key=key, digest_size=SIV_SIZE, person=b"bftfs-siv".ljust(16, b"\0"))
    h.update(len(aad).to_bytes(4, "big"))
    h.update(aad)
    h.update(data)
    return h.digest()


def siv_seal(iv_key: bytes, stream_key: bytes, data: bytes, aad: bytes) -> bytes:
    """``data`` encrypted deterministically (SIV, Rogaway and Shrimpton 2006): the IV a
    keyed hash (a PRF) of ``aad`` and ``data``, the ciphertext ``data`` XOR a keystream
    under that IV.  Equal inputs give equal outputs - which lets the nodes refuse a
    duplicate name they cannot read - and the IV authenticates; ``SIV_SIZE`` bytes longer
    than ``data``.  Two independent keys (:meth:`VolumeKey.subkey`)."""
    iv = _siv(iv_key, aad, data)
    stream = _siv_keystream(stream_key, iv, len(data))
    return iv + bytes(a ^ b for a, b in zip(data, stream, strict=True))


def siv_open(iv_key: bytes, stream_key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of a :func:`siv_seal` output.

    Raises:
        SealError: changed, bound to other ``aad``, or sealed under other keys.
    """
    if len(sealed) < SIV_SIZE:
        raise SealError(f"a sealed name has at least {SIV_SIZE} bytes, got {len(sealed)}")
    iv, body = sealed[:SIV_SIZE], sealed[SIV_SIZE:]
    stream = _siv_keystream(stream_key, iv, len(body))
    data = bytes(a ^ b for a, b in zip(body, stream, strict=True))
    if not hmac.compare_digest(_siv(iv_key, aad, data), iv):
        raise SealError("a sealed name does not open: changed, or under another key")
    return data


@dataclass(frozen=True)
class VolumeKey:
    """A cluster's volume key: what the mounts encrypt file contents under.  Clients hold
    it (their bundles carry it); nodes never do.  The configuration names it by
    :attr:`key_id` only, which reveals nothing of it."""

    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> VolumeKey:
        """A fresh random volume key."""
        return cls(os.urandom(KEY_SIZE))

    @property
    def key_id(self) -> bytes:
        """The key's public name: a keyed hash, so that a mount can tell a wrong key from
        the right one before it writes anything no other client could read."""
        return derive(self.secret, b"bftfs-volume-id")[:KEY_ID_SIZE]

    def subkey(self, purpose: bytes) -> bytes:
        """The key of one use (``b"bftfs-contents"``, ...): one volume key, separate keys."""
        return derive(self.secret, purpose)

    def save(self, path: Path) -> None:
        """Write the key to ``path`` with mode 0600."""
        save_secret(path, self.secret)

    @classmethod
    def load(cls, path: Path, key_id: bytes) -> VolumeKey:
        """Read the key at ``path`` and check it is the one ``key_id`` names.

        Raises:
            KeyFileError: missing, malformed, readable by others, or another key.
        """
        key = cls(load_secret(path))
        if not hmac.compare_digest(key.key_id, key_id):
            raise KeyFileError(
                f"volume key {path} is not the cluster's (its id {key.key_id.hex()}, the "
                f"configuration's volume_key_id {key_id.hex()})"
            )
        return key


def seal(key: bytes, data: bytes | bytearray | memoryview, aad: bytes) -> bytes:
    """``data`` encrypted and authenticated under ``key`` with a fresh random nonce, bound
    to ``aad``: ``nonce || ciphertext || tag`` (:data:`SEAL_OVERHEAD` bytes longer).  The
    nonce is random and 256 bits long, so no two sealings by any clients repeat one."""
    nonce = os.urandom(crypto_aead_aegis256_NPUBBYTES)
    return nonce + crypto_aead_aegis256_encrypt(bytes(data), aad, nonce, key)


def unseal(key: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
    """The plaintext of a value :func:`seal` made under ``key`` and ``aad``.

    Raises:
        SealError: the value was changed, cut, bound to other data, or sealed under
            another key.
    """
    raw = bytes(sealed)
    if len(raw) < SEAL_OVERHEAD:
        raise SealError(f"a sealed value has at least {SEAL_OVERHEAD} bytes, got {len(raw)}")
    nonce, body = raw[:crypto_aead_aegis256_NPUBBYTES], raw[crypto_aead_aegis256_NPUBBYTES:]
    try:
        return crypto_aead_aegis256_decrypt(body, aad, nonce, key)
    except CryptoError:
        raise SealError("a sealed value does not open: changed, or under another key") from None


#: Length of an Ed25519 signature (an administrator's, over a view: bftfs/membership).
SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class AdminKey:
    """The administrator's Ed25519 signing key: what makes a view believable (seed 000's
    administrator; docs/membership.md).  ``bftfs init`` makes it in the operator's
    directory; no node or client bundle ever carries it, so no node can sign a view."""

    seed: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> AdminKey:
        """A fresh random administrator key."""
        return cls(bytes(SigningKey.generate()))

    @property
    def public(self) -> bytes:
        """The 32-byte verifying key that goes into ``[cluster] admin_key``."""
        return bytes(SigningKey(self.seed).verify_key)

    def sign(self, data: bytes) -> bytes:
        """The detached 64-byte signature of ``data``."""
        return SigningKey(self.seed).sign(data).signature

    def save(self, path: Path) -> None:
        """Write the key to ``path`` with mode 0600."""
        save_secret(path, self.seed)

    @classmethod
    def load(cls, path: Path) -> AdminKey:
        """Read a key written by :meth:`save`.

        Raises:
            KeyFileError: missing, malformed or readable by others.
        """
        return cls(load_secret(path))


def signature_ok(public: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``data``; any malformed
    key or signature is simply not a valid one (what a peer sends must not raise)."""
    if len(public) != KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public).verify(data, signature)
    except (BadSignatureError, ValueError, TypeError, CryptoError):
        return False
    return True


def seal_buffer(key: bytes, data: bytes | bytearray | memoryview, aad: bytes) -> bytearray:
    """:func:`seal` of a big value (a file's block), written in place: the same
    ``nonce || ciphertext || tag``, encrypted straight into the buffer it is returned in.

    pynacl's binding zeroes a buffer, copies the ciphertext out of it, and the nonce is
    joined on again: 1.18 ms for 1 MiB here against 0.10 in place, most of it copies made
    with the GIL held (issue 34, third pass).  libsodium is called through cffi, which
    releases the GIL, so a worker thread sealing a flush leaves the mount's loop running.
    """
    if _lib is None:  # pragma: no cover - pynacl always ships its cffi module today
        return bytearray(seal(key, data, aad))
    out = unfilled(SEAL_OVERHEAD + len(data))
    seal_into(key, data, aad, out)
    return out


def seal_into(
    key: bytes, data: bytes | bytearray | memoryview, aad: bytes, out: bytearray | memoryview
) -> None:
    """:func:`seal_buffer` written into ``out`` (exactly ``SEAL_OVERHEAD + len(data)``
    bytes, writable): a block sealed straight into the stripes it is erasure-coded from
    (``erasure.encode_into``), so that no copy of it is made to split it (issue 34)."""
    n = len(data)
    if len(out) != SEAL_OVERHEAD + n:
        raise ValueError(f"{len(out)} bytes to seal {n} into, not {SEAL_OVERHEAD + n}")
    if _lib is None:  # pragma: no cover - pynacl always ships its cffi module today
        out[:] = seal(key, data, aad)
        return
    nonce = os.urandom(crypto_aead_aegis256_NPUBBYTES)
    out[:crypto_aead_aegis256_NPUBBYTES] = nonce
    written = _ffi.new("unsigned long long *")
    rc = _lib.crypto_aead_aegis256_encrypt(
        _ffi.from_buffer(out, require_writable=True) + crypto_aead_aegis256_NPUBBYTES,
        written,
        _ffi.from_buffer(data),
        n,
        aad,
        len(aad),
        _ffi.NULL,
        nonce,
        key,
    )
    if rc != 0 or written[0] != n + crypto_aead_aegis256_ABYTES:  # pragma: no cover
        raise SealError("encryption failed")


def unseal_buffer(key: bytes, sealed: bytes | bytearray | memoryview, aad: bytes) -> bytearray:
    """:func:`unseal` of a big value, read in place and written once (pynacl's binding
    copies the ciphertext out, zeroes a buffer and copies the plaintext out of it).

    Raises:
        SealError: as :func:`unseal`.
    """
    if _lib is None:  # pragma: no cover - pynacl always ships its cffi module today
        return bytearray(unseal(key, bytes(sealed), aad))
    if len(sealed) < SEAL_OVERHEAD:
        raise SealError(f"a sealed value has at least {SEAL_OVERHEAD} bytes, got {len(sealed)}")
    view = memoryview(sealed)
    nonce = bytes(view[:crypto_aead_aegis256_NPUBBYTES])
    clen = len(view) - crypto_aead_aegis256_NPUBBYTES
    out = unfilled(clen - crypto_aead_aegis256_ABYTES)
    written = _ffi.new("unsigned long long *")
    rc = _lib.crypto_aead_aegis256_decrypt(
        _ffi.from_buffer(out),
        written,
        _ffi.NULL,
        _ffi.from_buffer(view[crypto_aead_aegis256_NPUBBYTES:]),
        clen,
        aad,
        len(aad),
        nonce,
        key,
    )
    if rc != 0:
        raise SealError("a sealed value does not open: changed, or under another key")
    return out


def unseal_in_place(key: bytes, sealed: bytearray, aad: bytes) -> bytearray:
    """:func:`unseal` of a big value into the buffer it is in: the same bytearray, cut to
    the plaintext (a block joined from its fragments for the caller alone, ``erasure``'s
    ``_join``), so opening it needs no second buffer of its size and no fresh pages to
    fault in (issue 34).

    libsodium's AEGIS-256 reads each 16-byte block of ciphertext before it writes that
    block of plaintext (``net/session.py`` decrypts frames in place the same way); the nonce
    is copied out first, and the nonce and tag are cut off the buffer afterwards (a
    bytearray drops its head without moving the rest).  A value that does not open is
    zeroed by libsodium: the caller tries another key on a copy, never on this buffer.

    Raises:
        SealError: as :func:`unseal`.
    """
    if _lib is None:  # pragma: no cover - pynacl always ships its cffi module today
        sealed[:] = unseal(key, bytes(sealed), aad)
        return sealed
    if len(sealed) < SEAL_OVERHEAD:
        raise SealError(f"a sealed value has at least {SEAL_OVERHEAD} bytes, got {len(sealed)}")
    npub = crypto_aead_aegis256_NPUBBYTES
    nonce = bytes(sealed[:npub])
    clen = len(sealed) - npub
    written = _ffi.new("unsigned long long *")
    buf = _ffi.from_buffer(sealed)
    try:
        rc = _lib.crypto_aead_aegis256_decrypt(
            buf + npub, written, _ffi.NULL, buf + npub, clen, aad, len(aad), nonce, key
        )
    finally:
        _ffi.release(buf)  # the bytearray may be resized again
    if rc != 0:
        raise SealError("a sealed value does not open: changed, or under another key")
    del sealed[len(sealed) - crypto_aead_aegis256_ABYTES :]
    del sealed[:npub]
    return sealed


class PassphraseError(Exception):
    """A passphrase-sealed archive cannot be opened: not one, a wrong passphrase, or
    altered (the two last cannot be told apart, by design of an authenticated cipher)."""


#: The first bytes of a passphrase-sealed archive (:func:`seal_with_passphrase`).
PASSPHRASE_MAGIC = b"bftfs passphrase-sealed 1\n"
_COSTS = struct.Struct(">QQ")  # Argon2id's opslimit and memlimit, as written


def seal_with_passphrase(
    passphrase: bytes,
    data: bytes,
    *,
    opslimit: int = argon2id.OPSLIMIT_MODERATE,
    memlimit: int = argon2id.MEMLIMIT_MODERATE,
) -> bytes:
    """``data`` sealed under a key stretched from ``passphrase`` (``bftfs keys export``):
    Argon2id with a random salt and the given costs (libsodium's "moderate": about 1 s and
    256 MiB, so each guess costs an attacker as much), then XSalsa20-Poly1305
    (``SecretBox``, random nonce).  The header carries the salt and costs in the clear;
    changing either derives another key, so the box's tag refuses it."""
    salt = os.urandom(argon2id.SALTBYTES)
    key = argon2id.kdf(SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit)
    header = PASSPHRASE_MAGIC + salt + _COSTS.pack(opslimit, memlimit)
    return header + bytes(SecretBox(key).encrypt(data))


def open_with_passphrase(passphrase: bytes, sealed: bytes) -> bytes:
    """What :func:`seal_with_passphrase` sealed.

    Raises:
        PassphraseError: not such an archive, costs beyond libsodium's "sensitive" ones (a
            crafted header must not make the reader spend gigabytes), a wrong passphrase,
            or the archive altered.
    """
    if not sealed.startswith(PASSPHRASE_MAGIC):
        raise PassphraseError("not a bftfs passphrase-sealed archive")
    at = len(PASSPHRASE_MAGIC)
    salt = sealed[at : at + argon2id.SALTBYTES]
    at += argon2id.SALTBYTES
    if len(sealed) < at + _COSTS.size + SecretBox.NONCE_SIZE + SecretBox.MACBYTES:
        raise PassphraseError("the archive is truncated")
    opslimit, memlimit = _COSTS.unpack_from(sealed, at)
    at += _COSTS.size
    if not (
        argon2id.OPSLIMIT_MIN <= opslimit <= argon2id.OPSLIMIT_SENSITIVE
        and argon2id.MEMLIMIT_MIN <= memlimit <= argon2id.MEMLIMIT_SENSITIVE
    ):
        raise PassphraseError("the archive's header is damaged (impossible Argon2id costs)")
    key = argon2id.kdf(SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit)
    try:
        return bytes(SecretBox(key).decrypt(sealed[at:]))
    except CryptoError:
        raise PassphraseError("wrong passphrase, or the archive was altered") from None


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

    def replace_peers(self, peers: Mapping[PrincipalId, bytes]) -> None:
        """Take ``peers`` as the principals this ring talks to from now on (a new view:
        bftfs/membership), in place, so every holder of the ring sees the change at once:
        a principal no longer among them has no key, whatever its connections did before."""
        keys = {pid: pairwise_key(self.me, pub) for pid, pub in peers.items() if pid != self.me.pid}
        keys[self.me.pid] = self._keys[self.me.pid]
        self._keys = keys

    def key(self, peer: PrincipalId) -> bytes | None:
        """The key shared with ``peer``, or None when ``peer`` is unknown."""
        return self._keys.get(peer)

    def peers(self) -> Iterable[PrincipalId]:
        """Every principal this ring has a key for (itself included)."""
        return self._keys.keys()
