"""Signatures by a node's long-term key for cross-group certificates (issue 66,
docs/layout.md "Certificates").

A certificate must convince a third party (another group's nodes), which Q/U's pairwise
MACs cannot.  The key a layout names for each node is its long-term X25519 public key
(``layout/model.py`` ``LayoutNode.public_key``, the node's ``Identity``); X25519 keys do
Diffie-Hellman, not signatures, so a node signs with the same key by **XEdDSA** (Signal's
specification, Perrin 2016): the Montgomery private scalar ``k`` is used as an Edwards
scalar with the sign bit of its public point forced to 0, and the signature is a plain
Ed25519 signature under the Edwards form of the X25519 public key.  So nothing new is
distributed: every layout already names the key that checks a node's statements, and a
verifier needs only libsodium's Ed25519 check.

The nonce is derived from the private scalar and the message (as Ed25519's), with a
domain prefix of its own (XEdDSA's ``hash_1``), so a signature is deterministic: the same
node signs the same statement identically, which keeps retried replies byte-identical.
"""

from __future__ import annotations

import functools
import hashlib

from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

#: The field prime and the group order of Curve25519 / Ed25519.
_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
#: A signature's size (R || s).
SIGNATURE_SIZE = 64
KEY_SIZE = 32


def _clamped(private: bytes) -> int:
    """The X25519 scalar of a 32-byte private key (RFC 7748's clamping)."""
    k = bytearray(private)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


@functools.lru_cache(maxsize=4096)
def edwards_key(public: bytes) -> bytes | None:
    """The Ed25519 verifying key (sign bit 0) of X25519 public key ``public``, or None for
    a key that has none (``u = -1``, or not 32 bytes).  Cached: a node checks the same
    few keys (its layout's) again and again, and the field inversion costs as much as the
    signature check."""
    if len(public) != KEY_SIZE:
        return None
    u = int.from_bytes(public, "little") & ((1 << 255) - 1)
    if (u + 1) % _P == 0:
        return None
    y = (u - 1) * pow(u + 1, _P - 2, _P) % _P
    return y.to_bytes(32, "little")


def sign(private: bytes, message: bytes) -> bytes:
    """The XEdDSA signature of ``message`` by X25519 private key ``private`` (32 bytes)."""
    k = _clamped(private) % _Q
    big_a = bytearray(crypto_scalarmult_ed25519_base_noclamp(k.to_bytes(32, "little")))
    a = k
    if big_a[31] & 0x80:  # force the sign bit to 0: negate the scalar
        a = (-k) % _Q
        big_a[31] &= 0x7F
    pub = bytes(big_a)
    prefix = b"\xfe" + b"\xff" * 31  # XEdDSA's hash_1 domain
    r = int.from_bytes(
        hashlib.sha512(prefix + a.to_bytes(32, "little") + message).digest(), "little"
    )
    r %= _Q
    big_r = crypto_scalarmult_ed25519_base_noclamp(r.to_bytes(32, "little"))
    h = int.from_bytes(hashlib.sha512(big_r + pub + message).digest(), "little") % _Q
    s = (r + h * a) % _Q
    return big_r + s.to_bytes(32, "little")


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is X25519 key ``public``'s XEdDSA signature of ``message``;
    anything malformed is simply not valid (what a Byzantine client sends must not raise)."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        return False
    ed = edwards_key(public) if isinstance(public, bytes) else None
    if ed is None:
        return False
    try:
        VerifyKey(ed).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError, CryptoError):
        return False
    return True
