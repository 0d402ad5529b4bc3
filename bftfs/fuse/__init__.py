"""The FUSE frontend: pyfuse3 ``Operations`` over :mod:`bftfs.fs` (the only pyfuse3 user)."""
