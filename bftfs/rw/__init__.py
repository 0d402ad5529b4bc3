"""PASIS read/write protocol for file blocks (seed 004 chapter 3, L643-1360).

Modules, one role each: ``timestamp`` (logical timestamps), ``messages`` (wire format),
``schema`` (on-disk layout), ``classify`` and ``verify`` (pure client decision cores),
``replica``, ``collect``, ``forget``, ``scrubstep``, ``quota``, ``repairs`` (node-side steps
over a KV), ``lazy`` and ``behind`` (the cores of lazy verification and catch-up),
``batch`` (per-node request batching), and the client, I/O only: ``client`` (the facade
``RWClient``) over ``calls``, ``health``, ``write``, ``readround``, ``read``, ``failures``,
and ``scrub`` (a scrub of one block through it).  See docs/rw.md for the design
notes.  Importing this package imports nothing else, so the pure cores stay free of trio
and lmdb.
"""
