"""Statements a node can forward and every node can check: MAC authenticators.

The seed signs the replies of a progress certificate so that acceptors, not only the
leader who gathered them, can check them (L6705-6720, Fig. 6.8 line 117); the leader
election's proof and the checkpoint certificates (L5904-5925) are forwarded the same way.
bftfs nodes own X25519 key pairs for Diffie-Hellman, not signing keys (``bftfs/crypto.py``),
so a statement carries an *authenticator* instead of a signature: one MAC per node, the MAC
for node ``j`` under the key ``signer`` shares with ``j`` (the seed's MAC authenticators,
L5205-5222, as in its Byzantine Listeners, L1295-1326).

What this gives, and what the cores rely on: a node ``j`` accepts a statement as the
signer's only when its own entry verifies, so no one can make ``j`` accept a statement a
correct node did not make (the only property Lemma 45's counting needs).  What it does not
give, unlike a signature (L1297-1301): a Byzantine signer can make its entry verify at some
nodes and not others, so a certificate that holds at the leader may hold one reply fewer at
an acceptor.  That costs liveness in one regency (the acceptor refuses the certificate and
the next regent gathers another), never safety, because every node counts only what
verifies for itself.
"""

from __future__ import annotations

from collections.abc import Callable

from bftfs.crypto import mac, mac_ok
from bftfs.fab.messages import Signed

#: ``key(peer)``: the key this node shares with ``peer`` (itself included), None if unknown;
#: ``bftfs.crypto.KeyRing.key`` has this shape.
KeyLookup = Callable[[int], bytes | None]


def sign(me: int, key: KeyLookup, body: bytes, nodes: int) -> Signed:
    """``body`` stated by ``me``, with an entry for each of the ``nodes`` nodes."""
    macs = []
    for j in range(nodes):
        k = key(j)
        macs.append(mac(k, body) if k is not None else b"")
    return Signed(me, body, tuple(macs))


def verify(me: int, key: KeyLookup, statement: Signed, nodes: int) -> bool:
    """Whether this node's entry of ``statement`` verifies (the node ``signer`` made it)."""
    return 0 <= statement.signer < nodes and verify_any(me, key, statement, nodes)


def verify_any(me: int, key: KeyLookup, statement: Signed, nodes: int) -> bool:
    """Whether this node's entry verifies, whoever signed (a client's request, L5379-5385)."""
    if len(statement.macs) != nodes or not 0 <= me < nodes:
        return False
    k = key(statement.signer)
    return k is not None and mac_ok(k, statement.body, statement.macs[me])
