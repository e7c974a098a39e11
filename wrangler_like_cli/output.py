"""Console output shared by the commands: wrangler-style log lines and rich tables."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.markup import escape

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

LOG_LEVELS = ("debug", "info", "log", "warn", "error", "none")


class _WranglerFormatter(logging.Formatter):
    _NAMES = {"WARNING": "warn", "CRITICAL": "error"}

    def format(self, record: logging.LogRecord) -> str:
        level = self._NAMES.get(record.levelname, record.levelname.lower())
        prefix = "worker" if record.name == "edgewise.worker" else "wrangler"
        text = f"[{prefix}:{level}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str) -> None:
    """``--log-level``: wrangler's names; "log" is info, "none" silences everything."""
    numeric = {"debug": logging.DEBUG, "info": logging.INFO, "log": logging.INFO, "warn": logging.WARNING,
               "error": logging.ERROR, "none": logging.CRITICAL + 1}[level]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_WranglerFormatter())
    handler.setLevel(numeric)
    root = logging.getLogger("edgewise")
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    root.propagate = False
    # Worker logs (console.log) always reach `edgewise tail`; the handler's level decides what prints.
    logging.getLogger("edgewise.worker").setLevel(logging.DEBUG)


def fail(message: str) -> None:
    """Print a clear error and exit non-zero (click's Abort would print 'Aborted!' instead)."""
    # escape: messages quote config tables such as [vars], which rich would take for style tags
    err_console.print(f"[bold red]✘ [ERROR][/] {escape(message)}", markup=True, soft_wrap=True)
    raise SystemExit(1)
