"""The handshake, session keys, and the sealed frames of an established session.

Wire format (version :data:`bftfs.WIRE_VERSION`)::

    handshake frame = u32 big-endian length || body || tag    (length = len(body) + 16)
    tag             = MAC(K_pair, body)                       (keyed BLAKE2b, 16 bytes)
    hello     body = msgpack [version, "hello", client_pid, server_pid, nonce_c, view_c,
                              package_c]
    hello-ack body = msgpack [version, "hello-ack", server_pid, client_pid, nonce_c, nonce_s,
                              view_s, proof, package_s]
    refusal   body = msgpack [version, "hello-refused", server_pid, client_pid, nonce_c,
                              reason]     (tag under the key the caller had: see below)
    proof          = Ed25519(view_s's key of server_pid, PROOF_DOMAIN ||
                             msgpack [server_pid, client_pid, nonce_c, nonce_s, view_s])
                     | b""    (the server holds no key for view_s)

    session frame   = u32 length || u64 seq || AEAD(K_dir, nonce = 0^24 || seq, ad = seq, m)
    request   m = msgpack [0, req_id, kind, payload]                             K_dir = K_c2s
    reply     m = msgpack [1, req_id, status, payload | [code, message]]         K_dir = K_s2c
    push      m = msgpack [2, 0, 0, body]                                        K_dir = K_s2c

``K_pair`` is the Diffie-Hellman pairwise key of the two principals (``crypto.KeyRing``).
Each connection derives fresh session keys ``K_c2s``/``K_s2c`` from ``K_pair`` and both
16-byte nonces, and each direction numbers its frames with ``seq`` = 1, 2, 3, ...; the AEAD
is AEGIS-256, so contents are encrypted as well as authenticated.  A receiver
drops a frame that fails authentication and any frame whose ``seq`` is not above the last
one it accepted.  Together: a tampered frame fails authentication, a frame replayed inside
a connection fails the sequence check, and a frame replayed into another connection fails
authentication because the session keys differ.  A principal whose key is not in the
configuration cannot complete the handshake, so it never gets an answer.  A push (a node's
message to a client that did not ask, issue 33) is one more server-to-client frame of the
same session: only the node at the other end of that session can seal one, and a node can
push only to principals connected to it.

Why AEGIS-256 (libsodium through pynacl; 32-byte key, 32-byte nonce, 32-byte tag): on this
machine it encrypts at about 1.3 GB/s against ChaCha20-Poly1305's 0.7 GB/s, which was 15%
of the mount daemon's and of a node's CPU while a big file streamed (docs/performance.md,
"Sixth pass").  Wire version 3; version 2 was ChaCha20-Poly1305 with a 16-byte tag.

Views (docs/membership.md): both hellos carry the number of the view their sender holds
(``view_c``, ``view_s``; 0 for a party without views), so whichever side is behind learns at
once that a newer view exists, and fetches it (the administrator's signature, not the
sender, makes it believable).  A principal revoked (or whose key was replaced) by a view is
answered with a refusal instead of silence when the server still knows the key it had: the
refusal is MACed under that old pairwise key, so the caller can believe it and say why
(:class:`SessionRefused`) instead of waiting out its timeouts.  Wire version 4 added the
view numbers and the refusal.

Per-view keys (wire version 5; seed 000's forgetting protocol, docs/membership.md): the
acknowledgement carries a *proof* that the server holds view ``view_s``: the caller's nonce
(with both nonces, both ids and the number) signed with the server's key for that view,
which the server forgets when it takes a later view.  The handshake only carries it
(``Session.peer_proof``, ``Session.proof_message``); whoever holds views checks it
(``membership/client.py``), since only it knows the view keys.

Package versions (wire version 6, issue 67): both hellos end with the speaker's package
version (``bftfs.__version__``), so a node knows what each client and peer runs
(``bftfs status``'s sessions) and a client what each node runs (``Session.peer_version``).

Speaking the previous version (``net/wires.py``, docs/operations.md, "Upgrading"): for the
length of a rolling upgrade a node accepts a hello of wire version ``WIRE_VERSION - 1``
and answers it in that version (without the package versions: the version-5 layout
above), and a client whose hello a node closes or refuses for its version says it again
in the previous version.  One version back, no more.  A hello of any other version whose
first five items are in this layout and whose MAC holds is answered with a refusal naming
both versions, in the caller's own version when it is older (version 4 can parse its
refusal) and in ours when it is newer (so that the caller can fall back); the first five
items of a hello keep their places in every later version for this reason.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from nacl.bindings import crypto_aead_aegis256_ABYTES as TAG_SIZE
from nacl.bindings import crypto_aead_aegis256_decrypt as _aead_decrypt
from nacl.bindings import crypto_aead_aegis256_encrypt as _aead_encrypt
from nacl.bindings import crypto_aead_aegis256_NPUBBYTES as _NONCE_BYTES
from nacl.exceptions import CryptoError

try:  # libsodium through pynacl's own cffi module: in place, without pynacl's copies
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - pynacl always ships it today
    _ffi = _lib = None

from bftfs import WIRE_VERSION, __version__
from bftfs.buffers import unfilled
from bftfs.crypto import MAC_SIZE, KeyRing, derive, mac, mac_ok
from bftfs.ids import PrincipalId
from bftfs.net.errors import FrameError, TransportError
from bftfs.net.frames import LENGTH, FrameReader, pack, packed, unpack

#: Largest hello frame: it is parsed before its MAC can be checked, so it is kept tiny.
MAX_HELLO = 256
#: The previous wire version, which this one still speaks for a rolling upgrade.
PREVIOUS_WIRE = WIRE_VERSION - 1
#: The oldest wire version with a refusal message (version 4 added it): older callers
#: only meet a closed connection.
OLDEST_REFUSABLE = 4
#: Longest package version string a hello may carry.
MAX_PACKAGE = 32
NONCE_SIZE = 16
_SEQ = struct.Struct(">Q")
_NONCE_PAD = bytes(_NONCE_BYTES - _SEQ.size)


class SessionRefused(TransportError):
    """The node refuses this principal (revoked, or its key replaced, by a view; or it
    speaks a wire version too far from ours); the message says which node, which
    principal and why.  Retrying does not help."""


class HandshakeClosed(TransportError):
    """The node closed the connection during the handshake without a word: it does not
    know our key, or (a node of the previous release) it does not speak our wire version
    (``net/wires.py`` says the hello again in the previous version)."""


class WireRefused(SessionRefused):
    """The node refused our hello for its wire version; ``wire`` is the version it speaks
    (the version of its refusal)."""

    def __init__(self, message: str, wire: int) -> None:
        super().__init__(message)
        self.wire = wire


def frame_bytes(body: bytes, key: bytes) -> bytes:
    """Length prefix, body and MAC: one frame ready for the wire."""
    return LENGTH.pack(len(body) + MAC_SIZE) + body + mac(key, body)


@dataclass
class Session:
    """One connection's keys and sequence numbers, for one side.

    Every frame after the handshake is encrypted and authenticated with AEGIS-256
    (libsodium through pynacl) under the direction's session key:
    ``u32 length || u64 seq || ciphertext || 32-byte tag``, the sequence number in the clear
    as the associated data and the nonce (zero-padded to 32 bytes; each direction has its
    own key and numbers its frames 1, 2, 3, ..., so no nonce repeats under a key).  File
    contents and names no longer cross the network in the clear (issue 18).
    """

    send_key: bytes
    recv_key: bytes
    send_seq: int = 0
    recv_seq: int = 0
    #: The view number the other side said it holds in its hello (0: none).
    peer_view: int = 0
    #: The server's proof that it holds ``peer_view`` and the bytes it signs (client side).
    peer_proof: bytes = b""
    proof_message: bytes = b""
    #: The wire version this session speaks (``PREVIOUS_WIRE`` with a node or client of
    #: the previous release) and the package version the other side said it runs (None:
    #: a previous-version hello, which does not carry it).
    wire: int = WIRE_VERSION
    peer_version: str | None = None

    def seal(self, msg: list[Any]) -> bytes | bytearray:
        """``msg`` (``[type, req_id, x, y]``) as the next frame of this direction (packed
        in place, :func:`~bftfs.net.frames.packed`)."""
        with packed(msg) as body:
            return self.seal_body(body)

    def seal_body(self, body: bytes | memoryview) -> bytes | bytearray:
        """Any ``body`` bytes as the next frame (the fuzzer sends nonsense this way).

        The ciphertext is written in place into the frame (length, sequence number,
        ciphertext, tag): pynacl's binding would zero a buffer, copy the ciphertext out
        of it and the frame be joined again, three passes over a fragment that this is
        one (issue 34)."""
        self.send_seq += 1
        seq = _SEQ.pack(self.send_seq)
        if _lib is None:  # pragma: no cover
            ct = _aead_encrypt(bytes(body), seq, _NONCE_PAD + seq, self.send_key)
            return LENGTH.pack(len(seq) + len(ct)) + seq + ct
        n = len(body)
        head = LENGTH.size + _SEQ.size
        frame = unfilled(head + n + TAG_SIZE)  # written whole below (buffers.unfilled)
        LENGTH.pack_into(frame, 0, _SEQ.size + n + TAG_SIZE)
        frame[LENGTH.size : head] = seq
        out = _ffi.from_buffer(frame)
        written = _ffi.new("unsigned long long *")
        rc = _lib.crypto_aead_aegis256_encrypt(
            out + head,
            written,
            _ffi.from_buffer(body),
            n,
            seq,
            _SEQ.size,
            _ffi.NULL,
            _NONCE_PAD + seq,
            self.send_key,
        )
        if rc != 0 or written[0] != n + TAG_SIZE:  # pragma: no cover - libsodium never fails here
            raise FrameError("malformed", "encryption failed")
        return frame

    def _decrypt(
        self, frame: bytes | bytearray | memoryview, seq_bytes: bytes
    ) -> bytes | bytearray | memoryview:
        """The plaintext of ``frame`` (after its sequence number), read in place and
        written once (pynacl's binding would slice, zero and copy out).

        A writable view (a big frame in :class:`FrameReader`'s buffer, which it hands out
        for one :meth:`open` only) is decrypted in place: the
        plaintext overwrites the ciphertext it comes from and is returned as a view of the
        frame.  libsodium's AEGIS-256 reads each 16-byte block of ciphertext before it
        writes that block of plaintext (``decrypt_detached``, the tag after both), so the
        output may be the input; no zeroed buffer of the frame's size is allocated and
        written once more (issue 34).  A frame that fails authentication is zeroed by
        libsodium, which is dropped anyway.

        Raises:
            FrameError: ``bad_mac``.
        """
        if _lib is None:  # pragma: no cover
            try:
                return _aead_decrypt(
                    bytes(frame[_SEQ.size :]), seq_bytes, _NONCE_PAD + seq_bytes, self.recv_key
                )
            except CryptoError:
                raise FrameError("bad_mac") from None
        clen = len(frame) - _SEQ.size
        written = _ffi.new("unsigned long long *")
        source = _ffi.from_buffer(frame) + _SEQ.size
        body: bytearray | memoryview
        if isinstance(frame, memoryview) and not frame.readonly:
            body = memoryview(frame)[_SEQ.size : _SEQ.size + clen - TAG_SIZE]
            into = source
        else:
            body = unfilled(clen - TAG_SIZE)  # written whole (or the frame is dropped)
            into = _ffi.from_buffer(body)
        rc = _lib.crypto_aead_aegis256_decrypt(
            into,
            written,
            _ffi.NULL,
            source,
            clen,
            seq_bytes,
            _SEQ.size,
            _NONCE_PAD + seq_bytes,
            self.recv_key,
        )
        if rc != 0:
            raise FrameError("bad_mac")
        return body

    def open(self, frame: bytes | bytearray | memoryview) -> list[Any]:
        """Authenticate, decrypt and decode one frame: ``[seq, type, req_id, x, y]``.

        A writable memoryview is decrypted in place (:meth:`_decrypt`): its bytes are the
        plaintext afterwards.  Nothing returned refers to the frame (msgpack copies what
        it decodes), so its buffer may be reused at once.

        Raises:
            FrameError: ``bad_mac`` (tampered, or under another key), ``malformed`` or
                ``replay``.
        """
        if len(frame) < _SEQ.size + TAG_SIZE:
            raise FrameError("malformed", "frame shorter than its sequence number and tag")
        seq_bytes = bytes(frame[: _SEQ.size])
        body = self._decrypt(frame, seq_bytes)
        (seq,) = _SEQ.unpack(seq_bytes)
        if seq <= self.recv_seq:
            raise FrameError("replay", f"seq {seq} <= {self.recv_seq}")
        msg = unpack(body)
        if (
            not isinstance(msg, list)
            or len(msg) != 4
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in msg[:2])
        ):
            raise FrameError("malformed", "not [type, req_id, x, y]")
        self.recv_seq = seq
        return [seq, *msg]


#: A view proof signs bytes starting with this (the view key signs nothing else).
PROOF_DOMAIN = b"bftfs-view-proof-v1\0"
#: Signs a handshake's proof message for the view numbered ``view``: the signature, or
#: ``b""`` when the server holds no key for that view (``Server.prove``).
Prover = Callable[[int, bytes], bytes]


def proof_message(server: int, client: int, nonce_c: bytes, nonce_s: bytes, view: int) -> bytes:
    """What a server signs with its view key to prove it holds ``view`` (module docstring)."""
    return PROOF_DOMAIN + pack([server, client, nonce_c, nonce_s, view])


def _session_keys(pair: bytes, nonce_c: bytes, nonce_s: bytes) -> tuple[bytes, bytes]:
    return derive(pair, b"bftfs-c2s", nonce_c, nonce_s), derive(
        pair, b"bftfs-s2c", nonce_c, nonce_s
    )


def _package(value: Any) -> str | None:
    """A hello's package version, or None when it is not a short string."""
    if isinstance(value, str) and 0 < len(value) <= MAX_PACKAGE:
        return value
    return None


async def client_handshake(
    stream: trio.abc.Stream,
    reader: FrameReader,
    keyring: KeyRing,
    server: PrincipalId,
    view: int = 0,
    wire: int = WIRE_VERSION,
) -> Session:
    """Run the client half of the handshake in wire version ``wire`` (ours, or
    :data:`PREVIOUS_WIRE` to a node of the previous release: ``net/wires.py``); the
    returned session is ready for requests (``Session.peer_view``: the view number the
    server holds; ``view``: ours).

    Raises:
        WireRefused: the server refused the hello's wire version.
        SessionRefused: the server refuses us (revoked, or our key replaced, by a view).
        HandshakeClosed: the server closed the connection without a word (it does that to
            principals it does not know, and a previous release to a newer hello).
        TransportError: the server is unknown to us, or answered with a bad
            acknowledgement.
    """
    if wire not in (WIRE_VERSION, PREVIOUS_WIRE):
        raise ValueError(f"wire version {wire}: this bftfs speaks {WIRE_VERSION}, {PREVIOUS_WIRE}")
    pair = keyring.key(server)
    if pair is None:
        raise TransportError(f"no key for node {server}")
    nonce_c = os.urandom(NONCE_SIZE)
    fields: list[Any] = [wire, "hello", keyring.me.pid, server, nonce_c, view]
    hello = pack(fields + [__version__] if wire == WIRE_VERSION else fields)
    await stream.send_all(frame_bytes(hello, pair))
    try:
        frame = await reader.read()
    except FrameError as e:
        raise TransportError(f"node {server}: bad handshake reply ({e})") from None
    if frame is None:
        raise HandshakeClosed(f"node {server} closed the connection during the handshake")
    frame = bytes(frame)  # (a hello is small: never read into a buffer of its own)
    if len(frame) > MAX_HELLO or not mac_ok(pair, frame[:-MAC_SIZE], frame[-MAC_SIZE:]):
        raise TransportError(f"node {server}: handshake reply failed authentication")
    try:
        msg = unpack(frame[:-MAC_SIZE])
    except FrameError:
        msg = None
    if not isinstance(msg, list) or len(msg) not in (6, 8, 9):
        raise TransportError(f"node {server}: malformed handshake reply")
    if len(msg) == 6 and msg[1:5] == ["hello-refused", server, keyring.me.pid, nonce_c]:
        said, why = msg[0], str(msg[5])[:200]
        if said != wire and isinstance(said, int) and not isinstance(said, bool):
            raise WireRefused(f"node {server} (wire {said}) refuses our wire {wire}: {why}", said)
        raise SessionRefused(f"node {server} refuses principal {keyring.me.pid}: {why}")
    size = 9 if wire == WIRE_VERSION else 8
    if len(msg) != size or msg[:5] != [wire, "hello-ack", server, keyring.me.pid, nonce_c]:
        raise TransportError(f"node {server}: handshake reply does not match our hello")
    nonce_s, peer_view, proof = msg[5], msg[6], msg[7]
    if not isinstance(nonce_s, bytes) or len(nonce_s) != NONCE_SIZE:
        raise TransportError(f"node {server}: bad server nonce")
    if not isinstance(peer_view, int) or isinstance(peer_view, bool) or peer_view < 0:
        raise TransportError(f"node {server}: bad view number in the handshake")
    if not isinstance(proof, bytes):
        raise TransportError(f"node {server}: bad view proof in the handshake")
    package = _package(msg[8]) if size == 9 else None
    if size == 9 and package is None:
        raise TransportError(f"node {server}: bad package version in the handshake")
    c2s, s2c = _session_keys(pair, nonce_c, nonce_s)
    signed = proof_message(server, keyring.me.pid, nonce_c, nonce_s, peer_view)
    return Session(
        c2s,
        s2c,
        peer_view=peer_view,
        peer_proof=proof,
        proof_message=signed,
        wire=wire,
        peer_version=package,
    )


def _parse_hello(frame: bytes) -> list[Any]:
    """The items of a hello frame of any version (its MAC not yet checked): the first five
    keep their places in every version (module docstring).

    Raises:
        FrameError: ``malformed``.
    """
    if len(frame) > MAX_HELLO or len(frame) <= MAC_SIZE:
        raise FrameError("malformed", "hello of wrong size")
    msg = unpack(frame[:-MAC_SIZE])
    if not isinstance(msg, list) or not 5 <= len(msg) <= 16 or msg[1] != "hello":
        raise FrameError("malformed", "not a hello")
    wire, c_pid, nonce_c = msg[0], msg[2], msg[4]
    if not isinstance(wire, int) or isinstance(wire, bool):
        raise FrameError("malformed", "wire version")
    if not isinstance(c_pid, int) or isinstance(c_pid, bool):
        raise FrameError("malformed", "client id")
    if not isinstance(nonce_c, bytes) or len(nonce_c) != NONCE_SIZE:
        raise FrameError("malformed", "client nonce")
    return msg


async def _refuse_wire(
    stream: trio.abc.Stream, keyring: KeyRing, msg: list[Any], frame: bytes
) -> None:
    """Answer an authenticated hello of a wire version we do not speak with a refusal
    that names both versions, then raise; an unauthenticated one only raises.

    Raises:
        FrameError: ``version``.
    """
    wire, c_pid, s_pid, nonce_c = msg[0], msg[2], msg[3], msg[4]
    why = f"wire version {wire!r}, this node speaks {WIRE_VERSION} (and {PREVIOUS_WIRE})"
    pair = keyring.key(PrincipalId(c_pid))
    body, tag = frame[:-MAC_SIZE], frame[-MAC_SIZE:]
    if (
        pair is not None
        and s_pid == keyring.me.pid
        and wire >= OLDEST_REFUSABLE
        and mac_ok(pair, body, tag)
    ):
        reason = (
            f"{why}: bftfs {__version__} speaks one wire version back, no more; upgrade "
            "one release at a time (docs/operations.md)"
        )
        said = wire if wire < WIRE_VERSION else WIRE_VERSION  # the caller parses its own
        no = pack([said, "hello-refused", keyring.me.pid, c_pid, nonce_c, reason])
        await stream.send_all(frame_bytes(no, pair))
    raise FrameError("version", why)


async def server_handshake(
    stream: trio.abc.Stream,
    reader: FrameReader,
    keyring: KeyRing,
    view: int = 0,
    refused: Mapping[PrincipalId, tuple[bytes, str]] | None = None,
    prove: Prover | None = None,
) -> tuple[PrincipalId, Session]:
    """Run the server half: authenticate the caller, answer, derive the session.  A hello
    of the previous wire version is answered in that version (module docstring).

    Args:
        view: the number of the view this server holds (sent in the acknowledgement).
        refused: principals this server refuses, each with the pairwise key of the key it
            had and the reason: one whose hello authenticates under that key is told the
            reason (module docstring) instead of meeting a closed connection.
        prove: signs the proof that this server holds ``view`` (None: no per-view keys).

    Raises:
        FrameError: ``unknown_peer``, ``bad_mac``, ``malformed``, ``version``,
            ``misdirected`` or ``refused``; the caller closes the connection.
    """
    frame = await reader.read()
    if frame is None:  # a port probe (``bftfs`` commands' fail-fast, a health check)
        raise FrameError("probe", "closed before hello")
    frame = bytes(frame)  # (a hello is small: never read into a buffer of its own)
    msg = _parse_hello(frame)
    wire = msg[0]
    if wire not in (WIRE_VERSION, PREVIOUS_WIRE):
        await _refuse_wire(stream, keyring, msg, frame)
    if len(msg) != (7 if wire == WIRE_VERSION else 6):
        raise FrameError("malformed", "not a hello")
    _, _, c_pid, s_pid, nonce_c, peer_view = msg[:6]
    if not isinstance(peer_view, int) or isinstance(peer_view, bool) or peer_view < 0:
        raise FrameError("malformed", "view number")
    package = _package(msg[6]) if wire == WIRE_VERSION else None
    if wire == WIRE_VERSION and package is None:
        raise FrameError("malformed", "package version")
    pid = PrincipalId(c_pid)
    pair = keyring.key(pid)
    body, tag = frame[:-MAC_SIZE], frame[-MAC_SIZE:]
    if pair is None or c_pid == keyring.me.pid or not mac_ok(pair, body, tag):
        old = None if refused is None else refused.get(pid)
        if old is not None and s_pid == keyring.me.pid and mac_ok(old[0], body, tag):
            no = pack([wire, "hello-refused", keyring.me.pid, c_pid, nonce_c, old[1]])
            await stream.send_all(frame_bytes(no, old[0]))
            raise FrameError("refused", f"principal {c_pid}: {old[1]}")
        if pair is None or c_pid == keyring.me.pid:
            raise FrameError("unknown_peer", f"principal {c_pid!r}")
        raise FrameError("bad_mac", "hello")
    if s_pid != keyring.me.pid:
        raise FrameError("misdirected", f"hello for node {s_pid!r}")
    nonce_s = os.urandom(NONCE_SIZE)
    me = keyring.me.pid
    proof = b"" if prove is None else prove(view, proof_message(me, c_pid, nonce_c, nonce_s, view))
    ack: list[Any] = [wire, "hello-ack", me, c_pid, nonce_c, nonce_s, view, proof]
    if wire == WIRE_VERSION:
        ack.append(__version__)
    await stream.send_all(frame_bytes(pack(ack), pair))
    c2s, s2c = _session_keys(pair, nonce_c, nonce_s)
    session = Session(send_key=s2c, recv_key=c2s, peer_view=peer_view, wire=wire)
    session.peer_version = package
    return pid, session
