"""Many BFT groups (issue 66, docs/layout.md): the layout and its service's core.

- ``model.py``: the layout (version, partitions of object and block ids, partitions to
  groups, groups to nodes with keys and trust domains), its rules, the partition hashes;
- ``builder.py``: groups made across trust domains, partitions spread and kept in place;
- ``diff.py``: which partitions move from one layout to the next;
- ``codec.py``: canonical bytes, the administrator's signature (the membership views'
  own envelope, ``membership/signed.py``) and the check a client or node makes of a
  layout it is given;
- ``groups.py``: the layout a cluster holds (``layout.signed``) and one group as a
  configuration of its own, which nodes, mounts and ``bftfs status`` run on;
- ``grow.py``: groups added (``bftfs group add``, crash-safe by an intent) and the layout
  that ends the move they start (``bftfs group finish``).

The mounts' routers are ``fs/clients/groups.py``, the node's refusal of other groups' ids
``node/placement.py``; the partition mover is ``fs/generations/partmover.py``; the
simulation of many groups is ``benchmarks/groups_sim.py``.
"""
