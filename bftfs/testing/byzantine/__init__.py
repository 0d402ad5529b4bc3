"""Byzantine behaviours, in one place for the tests and for ``bftfs node --byzantine``.

A Byzantine node is an honest node some of whose answers are replaced: the node's
``FaultHooks.handler(kind)`` hands a request to ``wrapper(ctx, payload, honest)``, which may
call the real handler and lie about its answer, or never call it.  Every lie the papers
promise to survive (up to ``b`` such nodes) is written once here:

- :mod:`bftfs.testing.byzantine.qu`: the Q/U behaviours (forged candidates and barriers,
  bad authenticators, made-up answers, a wrong object sync, refusals), written as
  synchronous functions of a reply so that the tier-1 in-memory cluster can run them
  without a loop, with :func:`~bftfs.testing.byzantine.qu.on_node` to put one on a node.
- :mod:`bftfs.testing.byzantine.rw`: the PASIS behaviours (corrupt fragments, fabricated
  versions, acknowledged but dropped writes, withheld or bogus histories, equivocation,
  garbage), built per node as node wrappers.
- :mod:`bftfs.testing.byzantine.profiles`: named sets of those behaviours that a real node
  process runs (``bftfs node --byzantine PROFILE``).

The in-process cluster installs them with ``qu.make_byzantine`` / ``rw.make_byzantine``
(through :class:`bftfs.testing.faults.FaultInjector`); the node process with a
:class:`~bftfs.testing.byzantine.profiles.ByzantineProfile`.  The profiles are the only
part of ``bftfs.testing`` that production code imports (the CLI, and only when the option
is given).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bftfs.node.service import Handler, RequestContext

#: A node-side wrapper: ``wrapper(ctx, payload, honest)`` answers in place of the handler.
NodeWrapper = Callable[["RequestContext", Any, "Handler"], Awaitable[Any]]

__all__ = ["NodeWrapper"]
