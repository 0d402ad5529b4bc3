"""Cluster configuration: a TOML file, its thresholds, and their validation.

One file describes a cluster completely: the fault thresholds (``t``, ``b``), the PASIS
parameters (``qc``, ``m``, block size), the storage settings, and every principal (node
address and public key; client name and public key).  Nodes and clients load it read-only;
nothing rewrites it except ``bftfs init`` and ``bftfs client``.

Two modules, one job each, re-exported here (40-odd modules import ``bftfs.config``):

- ``model.py``: the frozen dataclasses (``ClusterConfig``, ``NodeSpec``, ``ClientSpec``,
  ``RetiredClient``), the defaults, the threshold rules a configuration must obey
  (``ClusterConfig.validate``) and the client-id book-keeping;
- ``tomlfile.py``: the file itself, read strictly (``load``, ``from_dict``) and written
  atomically (``save``, ``dumps``, ``to_dict``).
"""

from __future__ import annotations

from bftfs.config.model import (
    BLOCK_ALIGN,
    CLIENT_ID_BASE,
    DEFAULT_B,
    DEFAULT_BIG_BLOCK_SIZE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_INLINE_LIMIT,
    DEFAULT_MAP_SIZE,
    DEFAULT_T,
    LISTENERS,
    MAX_BLOCK_SIZE,
    MAX_INLINE_LIMIT,
    MIN_MAP_SIZE,
    ClientSpec,
    ClusterConfig,
    ConfigError,
    MetricsConfig,
    NodeSpec,
    RetiredClient,
    default_sizes,
    engine_and_nodes,
    with_ports,
)
from bftfs.config.tomlfile import dumps, from_dict, load, parse_address, save, to_dict

__all__ = [
    "BLOCK_ALIGN",
    "CLIENT_ID_BASE",
    "DEFAULT_B",
    "DEFAULT_BIG_BLOCK_SIZE",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_INLINE_LIMIT",
    "DEFAULT_MAP_SIZE",
    "DEFAULT_T",
    "LISTENERS",
    "MAX_BLOCK_SIZE",
    "MAX_INLINE_LIMIT",
    "MIN_MAP_SIZE",
    "ClientSpec",
    "ClusterConfig",
    "ConfigError",
    "MetricsConfig",
    "NodeSpec",
    "RetiredClient",
    "default_sizes",
    "dumps",
    "engine_and_nodes",
    "from_dict",
    "load",
    "parse_address",
    "save",
    "to_dict",
    "with_ports",
]
