"""Connecting to a cluster as one of its configured clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bftfs.config import ClusterConfig
from bftfs.crypto import Identity, KeyRing
from bftfs.transport import Endpoint, open_endpoint


def client_identity(config: ClusterConfig, name: str) -> Identity:
    """Load the private key of the configured client ``name``.

    Raises:
        ConfigError: no such client.
        KeyFileError: the key file is missing, malformed or readable by others, or does not
            match the public key in the configuration.
    """
    from bftfs.crypto import KeyFileError

    spec = config.client(name)
    ident = Identity.load(spec.id, config.client_key_path(name))
    if ident.public != spec.public_key:
        raise KeyFileError(
            f"private key {config.client_key_path(name)} does not match client {name!r}'s "
            "public key in the configuration"
        )
    return ident


@asynccontextmanager
async def open_client(
    config: ClusterConfig, name: str = "client0", **endpoint_options: Any
) -> AsyncIterator[Endpoint]:
    """An :class:`Endpoint` speaking to every node as client ``name``."""
    ring = KeyRing(client_identity(config, name), config.node_public_keys())
    addresses = {s.id: (s.host, s.port) for s in config.nodes}
    async with open_endpoint(ring, addresses, **endpoint_options) as ep:
        yield ep
