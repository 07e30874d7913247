"""Run a Flower daemon as this process's child so that its output, whose lines carry no time, lands timestamped
(UTC) in a log file rotated by size and on the console; a stop signal to this process stops the daemon and what
it started (forwarded once to the daemon's process group), and the daemon never outlives this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its level names even when writing to a pipe
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
OUTPUT_GRACE_S = 2.0  # how long the last lines may take once the daemon exited


@dataclass(frozen=True)
class LogRotation:
    """Size-based rotation of a daemon's log: a new file at ``max_bytes``, ``backups`` old files kept."""

    max_bytes: int = 10 * 2**20
    backups: int = 5


def daemon_logger(path: Path, rotation: LogRotation) -> logging.Logger:
    """A logger (not registered globally) writing ``2025-01-31T12:00:00.123Z message`` lines to ``path``,
    rotated as ``rotation`` says, and to stderr.
    """
    formatter = logging.Formatter("%(asctime)s %(message)s")
    formatter.converter = time.gmtime
    formatter.default_time_format, formatter.default_msec_format = "%Y-%m-%dT%H:%M:%S", "%s.%03dZ"
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.Logger(f"fedrt.daemon:{path}", logging.INFO)
    for handler in (RotatingFileHandler(path, maxBytes=rotation.max_bytes, backupCount=rotation.backups,
                                        encoding="utf-8"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when this process dies, even by SIGKILL (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _copy_lines(stream: IO[bytes], logger: logging.Logger) -> None:
    for raw in iter(stream.readline, b""):
        if line := ANSI_CODES.sub("", raw.decode(errors="replace")).rstrip():
            logger.info(line)


def run_logged(command: Sequence[str], env: dict[str, str], logger: logging.Logger) -> int:
    """Run ``command`` in its own process group, each line it (or a process it starts) writes going to
    ``logger``; SIGTERM, SIGINT and SIGHUP to this process go to that group. Returns its exit code (128 + N
    when signal N killed it).
    """
    child = subprocess.Popen(list(command), env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=_die_with_parent)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    reader = threading.Thread(target=_copy_lines, args=(child.stdout, logger), daemon=True)
    reader.start()
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reader.join(OUTPUT_GRACE_S)  # a process the daemon left behind may hold the pipe open: do not wait for it
    for handler in logger.handlers:
        handler.close()
    return code if code >= 0 else 128 - code
