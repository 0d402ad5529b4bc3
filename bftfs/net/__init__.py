"""The network layer: authenticated, encrypted request/reply connections and quorum calls.

Modules, one job each: ``errors`` (the transport's exceptions), ``frames`` (message
encoding, length-prefixed frames, the socket reader and writer), ``session`` (the handshake,
session keys, sealed frames; the wire format's table), ``quorum`` (pure: the quorum
engine's decisions), ``driver`` (the trio loop running the engine), ``endpoint`` (the
calling side: connections, request ids, resends, ``call`` and ``quorum_call``, pushes
received through ``on_push``), ``batch`` (many queued requests to a node in one frame, and
quorum calls over it) and ``server`` (the answering side: handshake and dispatch of an
accepted connection to handlers, ``push`` to a connected principal).  Importing
this package imports nothing else, so the pure engine stays free of trio.
"""
