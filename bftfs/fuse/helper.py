"""``mount.fuse.bftfs``: the helper ``mount(8)`` runs for ``mount -t fuse.bftfs`` and for
``/etc/fstab`` lines of type ``fuse.bftfs``, as ``mount.fuse.bftfs CONFIG DIR [-o OPTIONS]``.

``CONFIG`` is a cluster's ``cluster.toml`` (or the directory holding it), ``DIR`` the mount
point, ``OPTIONS`` those of :mod:`bftfs.fuse.options` (``client=``, ``ro``,
``allow_other``, ``attr_timeout=``, ``entry_timeout=``, ``timeo=``, ``hard``,
``metrics_port=``) plus the generic ones mount(8) passes along.  Like ``bftfs mount`` it
starts the daemon in the background and returns once ``DIR`` is mounted; ``umount DIR``
(or ``bftfs umount DIR``) ends it.

mount(8) looks for helpers in ``/sbin``: install it there with ``make install-helper``
(a link to the virtualenv's ``mount.fuse.bftfs``) or
``ln -s "$(command -v mount.fuse.bftfs)" /sbin/mount.fuse.bftfs``.

Exit codes follow mount(8)'s: 0 mounted, 1 bad invocation or configuration, 32 the mount
failed (the message says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bftfs.config import ConfigError
from bftfs.crypto import KeyFileError, VolumeKey
from bftfs.fuse.options import MountOptions, OptionError

EXIT_USAGE = 1
EXIT_FAILURE = 32


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mount.fuse.bftfs",
        description="Mount a bftfs cluster (the helper mount(8) runs for type fuse.bftfs).",
    )
    p.add_argument("config", type=Path, help="the cluster's cluster.toml, or its directory")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("-o", dest="options", action="append", default=[], help="mount options")
    p.add_argument("-n", action="store_true", help="(mount(8): do not write /etc/mtab)")
    p.add_argument("-s", action="store_true", help="(mount(8): sloppy, ignored)")
    p.add_argument("-f", action="store_true", help="fake: check the arguments, mount nothing")
    p.add_argument("-v", action="store_true", help="verbose")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bftfs import config as cfgmod

    path: Path = args.config
    if path.is_dir():
        path = path / "cluster.toml"
    try:
        options = MountOptions().with_options(",".join(args.options))
        cfg = cfgmod.load(path.resolve())
        cfg.client(options.client)
        if cfg.volume_key_id is not None:  # a sealed cluster: its mounts need the volume key
            VolumeKey.load(cfg.volume_key_path, cfg.volume_key_id)
    except (OptionError, ConfigError, KeyFileError, OSError) as e:
        print(f"mount.fuse.bftfs: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.f:
        return 0
    try:
        from bftfs.fuse import mount as mountmod
    except ModuleNotFoundError as e:
        print(f"mount.fuse.bftfs: {e} (install bftfs with the fuse extra)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        pid = mountmod.mount_background(cfg, args.mountpoint, options, config_path=path.resolve())
    except mountmod.MountError as e:
        print(f"mount.fuse.bftfs: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if args.v:
        print(f"mounted {args.mountpoint.resolve()} as {options.client} (daemon pid {pid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
