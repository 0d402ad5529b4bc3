"""The ``bftfs`` command, one module per command group (:mod:`bftfs.cli.main` assembles
them; the exit codes are in :mod:`bftfs.cli.common`).  ``bftfs.cli:main`` is the console
entry point and ``python -m bftfs`` runs it."""

from bftfs.cli.main import main

__all__ = ["main"]
