"""The MAC vectors of Byzantine Listeners (table 3.4 [003 L1311-1335]), from node pairwise keys.

``mac_i(x)`` is "the vector: hash(x, key_{i,j}) for each node j": node ``i`` tags ``x`` once
for every node, each tag under the key ``i`` shares with that node, so node ``j`` can check
exactly one entry of it (``mac_i(x)[j]``) and no other.  The keys are the nodes' pairwise
keys (:class:`bftfs.crypto.KeyRing`: X25519 between two nodes, a node's own self-key for
its own entry), each passed through :func:`bftfs.crypto.derive` with the label
``bftfs-blisteners`` so that a register tag can never pass for a frame MAC or a Q/U
authenticator entry, and back.

What is tagged (each tuple starts with a tag of its role and names the register, so that an
answer for one register or one phase cannot be replayed for another; the seed's register is
a single one, bftfs has many):

- ``m_i = mac_i("m", key, ts_i, hash(D), last_ts, c)``: a node's timestamp answer (T3);
- ``K_i = mac_i("k", key, ts, hash(D), c)``: a node's TS OK (P6);
- ``J[i] = mac_i("j", key, ts, hash(D), c, K)``: a node's vouching for a forwarded
  write (S13).

The seed sends ``mac2_i(x) = (mac_i(x), mac_i(mac_i(x)))`` in T3 and P6.  Every check of
figures 3.3-3.4 (P4, Q2, V2) compares one entry ``[s]`` of the first vector with the
checking node's recomputation, so bftfs sends the first vector alone and says so here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from bftfs.crypto import MAC_SIZE, KeyRing, derive, mac, mac_ok
from bftfs.ids import PrincipalId

#: One tag per node, in the cluster's node order.
Vector = tuple[bytes, ...]

LABEL = b"bftfs-blisteners"


def data_hash(data: bytes) -> bytes:
    """``hash(D)``: what the MACs bind instead of the data itself."""
    return hashlib.blake2b(data, digest_size=32).digest()


def encode(*fields: Any) -> bytes:
    """The canonical bytes of a tuple of fields (msgpack: lists, ints, bytes, str)."""
    return msgpack.packb(list(fields), use_bin_type=True)


class Macs:
    """Node ``me``'s MAC keys with every node (itself included): it makes its own vectors
    and checks its entry of anyone's."""

    def __init__(self, me: int, nodes: Sequence[int], keys: Mapping[int, bytes]) -> None:
        if me not in nodes or set(nodes) - set(keys):
            raise ValueError("a Listeners MAC ring needs a key for every node, itself included")
        self.me = me
        self.nodes = tuple(nodes)
        self._keys = {j: derive(keys[j], LABEL) for j in self.nodes}
        self._pos = self.nodes.index(me)

    @classmethod
    def from_ring(cls, ring: KeyRing, nodes: Sequence[int]) -> Macs:
        """From a node's key ring (``bftfs.crypto``; ``node.keyring`` on a node process)."""
        keys = {j: ring.key(PrincipalId(j)) for j in nodes}
        missing = [j for j, k in keys.items() if k is None]
        if missing:
            raise ValueError(f"no pairwise key with nodes {missing}")
        return cls(ring.me.pid, nodes, {j: k for j, k in keys.items() if k is not None})

    def vector(self, *fields: Any) -> Vector:
        """``mac_me(x)``: one tag for each node."""
        x = encode(*fields)
        return tuple(mac(self._keys[j], x) for j in self.nodes)

    def check(self, author: int, vec: Vector | None, *fields: Any) -> bool:
        """Whether ``vec``'s entry for this node is ``mac_author(x)[me]``: the one entry of
        ``author``'s vector this node can check."""
        if author not in self._keys or vec is None or len(vec) != len(self.nodes):
            return False
        tag = vec[self._pos]
        return (
            isinstance(tag, bytes)
            and len(tag) == MAC_SIZE
            and mac_ok(self._keys[author], encode(*fields), tag)
        )


def parse_vector(raw: object, n: int) -> Vector:
    """A vector off the wire: ``n`` tags of :data:`~bftfs.crypto.MAC_SIZE` bytes.

    Raises ValueError otherwise."""
    if not isinstance(raw, (list, tuple)) or len(raw) != n:
        raise ValueError(f"a MAC vector is {n} tags")
    if not all(isinstance(t, bytes) and len(t) == MAC_SIZE for t in raw):
        raise ValueError(f"a MAC tag is {MAC_SIZE} bytes")
    return tuple(raw)
