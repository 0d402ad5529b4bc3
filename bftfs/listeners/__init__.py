"""Listeners: an atomic register on the minimal ``n = 3f + 1`` nodes (issue 68).

Martin's dissertation (seed 003), chapter 3, "Optimal Protocols and Listeners": a
writer queries timestamps and stores to a quorum (figure 3.1, W1-W14, [003 L923-958]);
a reader asks every node, which answer and then keep the reader as a *listener*,
forwarding every later write they receive until the reader says the read is complete
(R1-R15 and the server side [003 L1048-1074]).  Theorem 2 [003 L1095-1211] proves the
register atomic with ``3f + 1`` nodes and no signatures, for correct clients.

- :mod:`~bftfs.listeners.stamps`: timestamps (each writer's own set ``Cts``), the stored
  value, the threshold quorum sizes;
- :mod:`~bftfs.listeners.server`: a node's state (one value per register, the open
  reads) and its rules, pure;
- :mod:`~bftfs.listeners.writer`, :mod:`~bftfs.listeners.reader`: the client's two
  operations as state machines fed the replies, pure;
- :mod:`~bftfs.listeners.messages`: the wire forms and their checks;
- :mod:`~bftfs.listeners.client`: the operations over the transport (``bftfs.net``);
- :mod:`~bftfs.listeners.nodeside`: the handlers a node process registers, registers in
  its LMDB store.

docs/listeners.md has the protocol, its costs against Q/U and FaB, and the figures.
"""
