"""Membership that changes while the file system runs (issue 35; seed 000): views.

- ``view.py``: the numbered, administrator-signed view; its codec, signature and ordering
  (pure);
- ``signed.py``: the administrator-signed envelope, its check and the ordering of numbered
  documents (views and layouts: one implementation);
- ``configview.py``: a configuration's view, a view applied to a configuration, and the
  signed view files;
- ``client.py``: a client's view tracker (fetch from nodes ahead, send to nodes behind)
  and the check of a node's proof that it holds the view (``admit_session``, nodes too);
- ``viewkeys.py``: per-view node keys, their hash chains and their forgetting;
- ``admin.py``: issuing the next view (a new generation's too) and pushing it to the
  nodes (``bftfs client``, ``bftfs view``).

The node's side is ``bftfs/node/views.py`` and ``bftfs/node/generation.py``;
docs/membership.md says what is built.
"""
