"""Byzantine quorum systems (seed 001, Malkhi and Reiter; docs/quorums.md).

Modules, one job each: ``threshold`` (threshold systems by proof: the sizes of Examples
4.7, 5.7 and 5.12, their intersection properties from the quorum sizes alone, load,
fault tolerance, failure probability), ``grid`` (the grid constructions of Examples 4.8
and 5.8, built explicitly, and their formulas), ``systems`` (explicit set systems over
``n <= 16`` servers: quorum systems and fail-prone systems as bit masks, partitions, the
complements that decide whether a system exists), ``check`` (the
exhaustive checkers of M1/M2, D1/D2 and O1-O3, each finding the violating pair) and
``measures`` (load, fault tolerance and failure probability of an explicit system),
``fab`` (FaB Paxos's sizes and properties, seed 003 section 6.6).  The
protocols' rules (``bftfs/thresholds.py``) are written with ``threshold``; importing this
package imports nothing else of bftfs.
"""
