"""A cluster's keys edited offline, in its configuration and key files: a client added
with a fresh key pair, a client removed (its id retired, never given again), the volume key
rotated.  Nodes take the new configuration when restarted; online changes go through views
(``bftfs client``, docs/membership.md)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from bftfs import config as cfgmod
from bftfs.config import ClientSpec, ClusterConfig, ConfigError, RetiredClient
from bftfs.crypto import Identity, VolumeKey
from bftfs.ids import client_id


def add_client(cfg: ClusterConfig, path: Path, name: str) -> ClientSpec:
    """Add client ``name`` to the configuration at ``path`` with a fresh key pair and the
    next id never used (``[cluster] next_client``), and write its private key.  Nodes admit
    it once they are restarted (they read the configuration when they start).

    Raises:
        ConfigError: the name is taken or not a valid name.
    """
    number = cfg.next_client_number
    ident = Identity.generate(client_id(number))
    spec = ClientSpec(client_id(number), name, ident.public)
    new = replace(cfg, clients=(*cfg.clients, spec), next_client=number + 1).validate()
    ident.save(new.client_key_path(name))
    cfgmod.save(new, path)
    return spec


def remove_client(cfg: ClusterConfig, path: Path, name: str) -> RetiredClient:
    """Revoke client ``name``: its entry leaves the configuration at ``path``, its id is
    recorded as retired (never given to another; history still names it) and its private
    key here is deleted.  Nodes refuse it once restarted.

    Raises:
        ConfigError: no such client.
    """
    spec = cfg.client(name)
    gone = RetiredClient(spec.id, spec.name)
    new = replace(
        cfg,
        clients=tuple(c for c in cfg.clients if c.name != name),
        retired_clients=(*cfg.retired_clients, gone),
        next_client=cfg.next_client_number,
    ).validate()
    cfgmod.save(new, path)
    shutil.rmtree(cfg.client_key_path(name).parent.parent, ignore_errors=True)
    return gone


def rotate_volume_key(cfg: ClusterConfig, path: Path) -> VolumeKey:
    """A new volume key for the sealed cluster at ``path``: what mounts write from now on is
    sealed under it; the current key becomes a previous one (kept, and carried in client
    bundles, so that what was written under it stays readable).  A client removed before
    the rotation holds only the old keys: it can read nothing written after it.

    Raises:
        ConfigError: the cluster has no volume key (made unencrypted: it stays so).
        KeyFileError: the current key file is missing or not the configuration's.
    """
    if cfg.volume_key_id is None:
        raise ConfigError("this cluster has no volume key (made with --no-seal): nothing to rotate")
    old = VolumeKey.load(cfg.volume_key_path, cfg.volume_key_id)
    new = VolumeKey.generate()
    old.save(cfg.previous_volume_key_path(old.key_id))
    rotated = replace(
        cfg,
        volume_key_id=new.key_id,
        previous_volume_key_ids=(old.key_id, *cfg.previous_volume_key_ids),
    ).validate()
    new.save(cfg.volume_key_path)
    cfgmod.save(rotated, path)
    return new
