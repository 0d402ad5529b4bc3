"""Q/U objects for the metadata (seed 004 chapter 4, L1886-3175; docs/qu.md).

Modules, one role each: ``canon`` (canonical bytes), ``timestamp`` and ``history``
(timestamps, candidates, replica histories and their authenticators), ``classify`` (pure:
classification, deduction, ``s_setup``), ``links`` (proven conditioned-on links),
``objects`` (object types and methods; the test types are
``bftfs/testing/testobjects.py``), ``messages`` (wire format),
``schema`` (on-disk layout), ``replica`` (the server step over a KV), ``core`` (pure client
decisions), ``client`` (the driver: I/O only), ``node`` (handler wiring) and ``catchup``
(a restarted server's background catch-up).  Importing this package imports nothing else.
"""
