"""The refusal of a stale name: a call that reaches an object by a name the kernel cached,
when no name reaches that object any more, and the kernel's walk again after one."""

from __future__ import annotations

import time
from typing import Any

from bftfs.fs.caches import MetadataCache
from bftfs.fs.errors import StaleView

#: Seconds after a stale name was refused (ESTALE) during which a lookup counts as the
#: kernel's walk again, and the object it found may be used once by that name even if it
#: is removed meanwhile (:meth:`StaleNames.check_reached`).
REVALIDATION_WINDOW = 0.1


class StaleNames:
    """Stale names refused, and the exception the kernel's walk again gets.  Given the
    cache (the names that reached a refused object)."""

    def __init__(self, cache: MetadataCache) -> None:
        self.cache = cache
        #: Last ESTALE for a stale name (monotonic s), the names that reached the refused
        #: object, and objects a lookup found right after one, with until when.
        self._refused_stale_at = -1e9
        self._refused_names: set[tuple[int, bytes]] = set()
        self._revalidated: dict[int, float] = {}

    def check_reached(self, ino: int, s: dict[str, Any]) -> None:
        """Refuse an object that no name reaches (link count 0: unlinked, or a removed
        directory) when the caller came to it by a name: that name was cached and is stale
        (another client removed the object or replaced it).

        One exception: the kernel's walk again after such a refusal (fresh lookups,
        LOOKUP_REVAL) found this object by its name, and another client removed it in the
        moment between that lookup and this call.  The call then goes on, ordered before
        the removal (as a local file system orders an open that raced an unlink): answering
        ESTALE a second time would reach the application, since the kernel retries once
        (two clients creating and removing one journal name hit that about once in 50).

        Raises:
            StaleView: the kernel then walks the path again with fresh lookups and finds
                what the name is now (the replacing file of an atomic save, or nothing).
        """
        # The exception holds for the first use after the lookup only: a later call that
        # reaches the object by the then cached name is refused like any stale name.
        armed = self._revalidated.pop(ino, 0.0) if self._revalidated else 0.0
        if s["nl"] != 0:
            return
        now = time.monotonic()
        if armed > now:
            return
        self._refused_stale_at = now
        self._refused_names = {
            (parent, name)
            for parent, names in self.cache.names.items()
            for name, (oid, _) in names.items()
            if oid == ino
        }
        raise StaleView(f"object {ino} has no name any more")

    def used_after_lookup(self, ino: int) -> None:
        """The caller's first use of ``ino`` after the lookup that found it is this one,
        decided by the caller (an open's ``looked_up``): the lookup's exception of
        :meth:`check_reached` is spent, so a later call by the cached name is refused."""
        self._revalidated.pop(ino, None)

    def looked_up(self, parent: int, name: bytes, ino: int) -> None:
        """A lookup of ``name`` in ``parent`` found ``ino``: if it is the refused name
        right after a stale name was refused, it is the kernel's walk again, and ``ino``
        may be used once by that name even if it is removed meanwhile."""
        now = time.monotonic()
        if (
            now - self._refused_stale_at < REVALIDATION_WINDOW
            and (parent, name) in self._refused_names
        ):
            # Once per refusal: a later lookup of the name (another call's, the consistency
            # checker found one renaming over it) must not make a removed file usable.
            self._refused_names.discard((parent, name))
            self._revalidated[ino] = now + REVALIDATION_WINDOW
            if len(self._revalidated) > 64:  # expired ones
                self._revalidated = {k: v for k, v in self._revalidated.items() if v > now}
