"""Q/U objects for the metadata (seed 004 chapter 4, L1886-3175; docs/qu.md).

Modules, one job each.  Shared: ``canon`` (canonical bytes), ``timestamp`` and ``history``
(timestamps, candidates, replica histories and their authenticators), ``classify`` (pure:
classification, deduction, ``s_setup``), ``links`` (proven conditioned-on links),
``objects`` (object types and methods; the test types are
``bftfs/testing/testobjects.py``), ``messages`` (wire format:
layout, kinds, field rules, small bodies), ``request`` and ``reply`` (the request and reply
messages).  Server side: ``serverconfig`` (``ReplicaConfig``, ``Retention``), ``schema`` and
``blobs`` (on-disk layout), ``replica`` (the request step over a KV), ``reads`` (answers from
the store: histories, latest, fetch, sync, versions), ``retention`` (pruning versions),
``tombstones`` (tombstones and forgetting), ``duties`` (when those come due), ``adoption``
(catch-up from the current state), ``objsync`` (object sync's decisions).  Client side:
``core`` (pure decisions), ``ohscache`` (the cached OHS and whom it leaves out),
``presenting`` (the OHS an operation presents and the reads that fill it in), ``rounds``
(the calls to the servers), ``linkproofs`` (proven links), ``attempt`` (one operation's
backoff and patience), ``client`` (the driver: the operation loop and repair).  History:
``past`` and ``pastread``.  Importing this package imports nothing else.
"""
