"""PASIS read/write protocol for file blocks (seed 004 chapter 3, L643-1360).

Modules, one role each: ``timestamp`` (logical timestamps), ``messages`` (wire format),
``schema`` (on-disk layout), ``classify`` and ``verify`` (pure client decision cores),
``replica`` (node-side steps over a KV), ``node`` (handler wiring), ``batch`` (per-node
request batching), ``client`` (the driver: I/O only).  See docs/rw.md for the design
notes.  Importing this package imports nothing else, so the pure cores stay free of trio
and lmdb.
"""
