"""Connecting to a cluster as one of its configured clients."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from bftfs.config import ClusterConfig, NodeSpec
from bftfs.crypto import Identity, KeyRing
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.errors import TransportError
from bftfs.net.frames import DEFAULT_MAX_FRAME
from bftfs.net.session import SessionRefused
from bftfs.net.wires import open_session


class IdentityRefused(TransportError):
    """The nodes that answered all refused this client's identity (its key is not in their
    configuration)."""


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
    config: ClusterConfig, name: str = "client0", *, views: Any = None, **endpoint_options: Any
) -> AsyncIterator[Endpoint]:
    """An :class:`Endpoint` speaking to every node as client ``name``, tracking views
    (``membership/client.py``: it learns newer views from nodes, tells nodes behind);
    ``views``: the tracker to attach (a session keeps it to follow generation changes),
    else a new one."""
    from bftfs.membership.client import ClientViews

    views = ClientViews(config) if views is None else views
    ring = KeyRing(client_identity(config, name), config.node_public_keys())
    addresses = {s.id: (s.host, s.port) for s in config.nodes}
    async with open_endpoint(ring, addresses, **endpoint_options) as ep:
        ep.needed = config.q  # a quorum live: the cluster makes progress (issue 60)
        views.attach(ep)
        yield ep


@asynccontextmanager
async def open_nodes(
    identity: Identity, config: ClusterConfig, **endpoint_options: Any
) -> AsyncIterator[Endpoint]:
    """An :class:`Endpoint` speaking to ``config``'s nodes as ``identity``, tracking no
    view (the caller attaches its tracker: a session's endpoint to another generation,
    ``fs/generations/clients.py``)."""
    ring = KeyRing(identity, config.node_public_keys())
    addresses = {s.id: (s.host, s.port) for s in config.nodes}
    async with open_endpoint(ring, addresses, **endpoint_options) as ep:
        ep.needed = config.q
        yield ep


async def check_identity(config: ClusterConfig, ring: KeyRing, timeout: float = 3.0) -> None:
    """One handshake with every node, at once: a client whose key the nodes do not know is
    told so at once, instead of every request waiting out its timeout (a node closes the
    connection of a principal it does not know, without a word).

    Raises:
        IdentityRefused: every node that answered closed the handshake (at least one did);
            unreachable nodes alone are not an error here.
    """
    refused: list[int] = []
    accepted: list[int] = []
    reasons: list[str] = []  # what nodes that refuse by a view said

    async def one(spec: NodeSpec) -> None:
        node = spec.id
        try:
            with trio.fail_after(timeout):
                stream, _, _ = await open_session(
                    functools.partial(trio.open_tcp_stream, spec.host, spec.port),
                    ring,
                    node,
                    0,
                    DEFAULT_MAX_FRAME,
                )
                accepted.append(node)
                await stream.aclose()
        except SessionRefused as e:
            refused.append(node)
            reasons.append(str(e))
        except TransportError:
            refused.append(node)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError):
            pass  # down or slow: the requests will tell

    async with trio.open_nursery() as nursery:
        for spec in config.nodes:
            nursery.start_soon(one, spec)
    if refused and not accepted and reasons:
        raise IdentityRefused(f"client {ring.me.pid} is refused: {min(reasons)}")
    if refused and not accepted:
        raise IdentityRefused(
            f"nodes {sorted(refused)} refused the identity of client {ring.me.pid}: its key is "
            "not in their configuration (a configuration from another cluster, or nodes "
            "started before this client was added?)"
        )
