"""One logging set-up for every bftfs program (STYLE.md section 4)."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: A log file is rotated at this size, three old ones kept (``node.log.1`` ...): a node
#: or mount that runs for years must not fill its disk with its own log.  The operator
#: may change it with ``BFTFS_LOG_BYTES``.
LOG_BYTES = 16 * 1024**2
LOG_BACKUPS = 3


def setup_logging(
    *,
    log_file: Path | None = None,
    debug_modules: list[str] | None = None,
    quiet: bool = False,
) -> None:
    """Log to ``log_file`` (rotating) or stderr; DEBUG for ``debug_modules`` and for the
    comma-separated modules of the ``BFTFS_DEBUG`` environment variable (so a test run's
    node and mount processes can be made to say more without changing how they start).

    ``faulthandler`` is enabled so a hung or crashed process leaves its stacks in the log.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_file is not None:
        handler: logging.Handler = RotatingFileHandler(
            log_file, maxBytes=log_bytes(), backupCount=LOG_BACKUPS
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    extra = [m for m in os.environ.get("BFTFS_DEBUG", "").split(",") if m]
    for mod in [*(debug_modules or []), *extra]:
        logging.getLogger(mod).setLevel(logging.DEBUG)
    faulthandler.enable()


def log_bytes() -> int:
    """The size a log file rotates at: ``BFTFS_LOG_BYTES`` if set to a positive number of
    bytes, else :data:`LOG_BYTES`."""
    raw = os.environ.get("BFTFS_LOG_BYTES", "")
    try:
        size = int(raw)
    except ValueError:
        return LOG_BYTES
    return size if size > 0 else LOG_BYTES
