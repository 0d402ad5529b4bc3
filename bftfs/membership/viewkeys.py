"""Per-view node keys and their forgetting (seed 000's "forgetting protocol", dissertation
[003 L3852-3982]; docs/membership.md, "Per-view keys").

Each view names, for every node, a **view key**: an Ed25519 public key valid in that view
only.  A node proves it holds the view it claims by signing the caller's nonce with the
view's private key in its handshake acknowledgement (``net/session.py``); a client
believes a node is *current in view N* only with that proof (``membership/client.py``).

The key schedule.  The administrator and node ``i`` share a **chain secret**, made when
the node gets its identity (``bftfs init``, ``bftfs node replace``) and anchored at a view
number ``a``; from it::

    s_i^(v+1) = H(s_i^v)                       (one-way: keyed BLAKE2b, "bftfs-chain")
    seed_i^v  = H(s_i^v, "bftfs-viewkey", v)    view v's Ed25519 signing key of node i

The seed's administrator picks each view's key pair and sends it encrypted under
``k_i^t = h(k_i^(t-1))`` [003 L3921-3946]; we derive the pair from the same hash chain
instead, so the administrator sends nothing but the signed view, and there is no message
carrying a private key to be replayed later.  What a node must forget is the same: on
taking view ``w`` it replaces ``s^v`` by ``s^w`` on disk (fsync'd, atomic rename) and keeps
view ``w``'s private key in memory only; from ``s^w`` nothing before ``w`` can be computed.
The administrator ratchets its copy the same way once a view is written (it forgets too;
it is trusted, as in the seed).

Files, both mode 0600:

- a node's ``<data_dir>/private/view-chain``: ``"<number> <secret hex>"``;
- the administrator's ``admin/private/view-chains``: JSON ``{node public key hex:
  [number, secret hex]}``, one chain per node *machine* (a replaced node's new machine has
  its own; the old machine's is dropped when the view replacing it is written).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nacl.signing import SigningKey

from bftfs.config import ConfigError
from bftfs.crypto import KEY_SIZE, derive, signature_ok

#: A node's chain file, under its data directory.
NODE_CHAIN = Path("private") / "view-chain"
#: The administrator's chains, beside the administrator key.
ADMIN_CHAINS = "view-chains"
#: Most views a chain is moved forward in one go (a number this far ahead is no view the
#: administrator issued: views are numbered one by one).
MAX_STEPS = 1 << 20


class ChainError(ConfigError):
    """A chain file is malformed, unreadable, or cannot reach the view asked for."""


@dataclass(frozen=True)
class Chain:
    """One node machine's chain secret at view ``number``."""

    number: int
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls, number: int) -> Chain:
        """A fresh random chain anchored at view ``number``."""
        return cls(number, os.urandom(KEY_SIZE))

    def at(self, number: int) -> Chain:
        """The chain at view ``number`` (not before this one's: the hash is one-way).

        Raises:
            ChainError: ``number`` is older than this chain's, or absurdly far ahead.
        """
        if number < self.number:
            raise ChainError(
                f"view {number} is before this chain's view {self.number}: its key is forgotten"
            )
        if number - self.number > MAX_STEPS:
            raise ChainError(f"view {number} is too far ahead of view {self.number}")
        secret = self.secret
        for _ in range(number - self.number):
            secret = derive(secret, b"bftfs-chain")
        return Chain(number, secret)

    def signing_key(self) -> SigningKey:
        """View ``number``'s private key (kept in memory only)."""
        return SigningKey(derive(self.secret, b"bftfs-viewkey", self.number.to_bytes(8, "big")))

    def public(self) -> bytes:
        """View ``number``'s public key, as the view names it."""
        return bytes(self.signing_key().verify_key)


def proof_ok(view_key: bytes, message: bytes, proof: bytes) -> bool:
    """Whether ``proof`` is the signature of ``message`` under the view key ``view_key``."""
    return bool(view_key) and signature_ok(view_key, message, proof)


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` durably and atomically, mode 0600: after a crash it holds
    the old contents or the new, whole.  Once this returns the old contents are out of the
    file system's name space and overwritten with zeros (:func:`_scrub_replaced`)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        old = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        replace_durably(path, data, 0o600)
        return
    try:
        replace_durably(path, data, 0o600)
        _scrub_replaced(old)
    finally:
        os.close(old)


def _scrub_replaced(fd: int) -> None:
    """Overwrite the file open as ``fd``, replaced by a rename a moment ago, with zeros and
    sync it, before its last descriptor closes and its blocks are freed: a forgotten chain
    secret (or the administrator's copy of the chains) does not stay readable in free
    blocks.  On file systems that write in place (ext4, XFS) this reaches the blocks that
    held it; copy-on-write and log-structured ones, journals and SSDs may keep other copies
    (docs/membership.md).  A file with another hard link is left alone: those bytes are
    still someone's file."""
    st = os.fstat(fd)
    if st.st_nlink > 0 or st.st_size == 0:
        return
    zeros = bytes(min(st.st_size, 1 << 16))
    done = 0
    while done < st.st_size:
        done += os.pwrite(fd, zeros[: st.st_size - done], done)
    os.fsync(fd)


def replace_durably(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` by ``data`` (file mode ``mode``) through a temporary file, fsynced,
    renamed over it, and the directory fsynced: after a crash it holds the old contents or
    the new, whole (view files and key chains)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_node_chain(data_dir: Path) -> Chain | None:
    """The node's chain, or None when it has none (a cluster made before per-view keys).

    Raises:
        ChainError: the file is there but unreadable or malformed.
    """
    path = data_dir / NODE_CHAIN
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ChainError(f"cannot read {path}: {e.strerror}") from None
    parts = text.split()
    try:
        number, secret = int(parts[0]), bytes.fromhex(parts[1])
    except (IndexError, ValueError):
        raise ChainError(f"{path}: not '<view number> <secret hex>'") from None
    if len(parts) != 2 or len(secret) != KEY_SIZE or number < 1:
        raise ChainError(f"{path}: not '<view number> <secret hex>'")
    return Chain(number, secret)


def save_node_chain(data_dir: Path, chain: Chain) -> None:
    """Write the node's chain, replacing (forgetting) the one it had."""
    _write_private(data_dir / NODE_CHAIN, f"{chain.number} {chain.secret.hex()}\n".encode())


class AdminChains:
    """The administrator's copy of every node machine's chain (``admin/private/view-chains``)."""

    def __init__(self, admin_key_path: Path) -> None:
        self.path = admin_key_path.parent / ADMIN_CHAINS

    def exists(self) -> bool:
        """Whether the cluster has per-view keys (a cluster made before them has none)."""
        return self.path.exists()

    def load(self) -> dict[bytes, Chain]:
        """Each node machine's chain, by its long-term public key.

        Raises:
            ChainError: the file is unreadable or malformed.
        """
        try:
            rows = json.loads(self.path.read_text())
            return {bytes.fromhex(k): Chain(int(n), bytes.fromhex(s)) for k, (n, s) in rows.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ChainError(f"{self.path}: unreadable view chains ({e})") from None

    def save(self, chains: dict[bytes, Chain]) -> None:
        rows = {k.hex(): [c.number, c.secret.hex()] for k, c in sorted(chains.items())}
        _write_private(self.path, json.dumps(rows, indent=1).encode())

    def add(self, node_public: bytes, chain: Chain) -> None:
        """Keep ``chain`` for the machine whose long-term key is ``node_public``."""
        chains = self.load()
        chains[node_public] = chain
        self.save(chains)

    def view_keys(self, node_publics: list[bytes], number: int) -> list[bytes]:
        """View ``number``'s public key of each node machine, in order.

        Raises:
            ChainError: a machine without a chain here, or one already past ``number``.
        """
        chains = self.load()
        out = []
        for pub in node_publics:
            chain = chains.get(pub)
            if chain is None:
                raise ChainError(f"no view chain for the node with key {pub.hex()[:16]}...")
            out.append(chain.at(number).public())
        return out

    def forget_before(self, node_publics: list[bytes], number: int) -> None:
        """View ``number`` is written: move the chains of its nodes to it and drop the others
        (machines no longer in the view)."""
        chains = self.load()
        kept = {p: chains[p].at(max(number, chains[p].number)) for p in node_publics if p in chains}
        self.save(kept)


__all__ = [
    "AdminChains",
    "Chain",
    "ChainError",
    "load_node_chain",
    "proof_ok",
    "save_node_chain",
]
