"""Run a Flower daemon as this process's child so that its output, whose lines carry no time, lands timestamped
(UTC) in a log file rotated by size and on the console; a stop signal to this process stops the daemon and what
it started (forwarded once to the daemon's process group), and the daemon never outlives this process.
"""

from __future__ import annotations

import contextlib
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

from wire.processes import sigterm_with_parent

ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its level names even when writing to a pipe
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
OUTPUT_GRACE_S = 2.0  # how long the last lines may take once the daemon exited
STOP_GRACE_S = 10.0  # how long a stopped child may take before it is killed


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


def _copy_lines(stream: IO[bytes], logger: logging.Logger) -> None:
    for raw in iter(stream.readline, b""):
        if line := ANSI_CODES.sub("", raw.decode(errors="replace")).rstrip():
            logger.info(line)


@dataclass(frozen=True)
class Companion:
    """A process the daemon needs beside it: started first, ready once ``ready_file`` exists, stopped with it."""

    name: str
    command: Sequence[str]
    ready_file: Path
    ready_s: float = 300.0


def _spawn(command: Sequence[str], env: dict[str, str], logger: logging.Logger,
           readers: list[threading.Thread]) -> subprocess.Popen:
    child = subprocess.Popen(list(command), env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=sigterm_with_parent)
    readers.append(threading.Thread(target=_copy_lines, args=(child.stdout, logger), daemon=True))
    readers[-1].start()
    return child


def _exit_code(code: int) -> int:
    return code if code >= 0 else 128 - code


def _await_ready(companion: Companion, child: subprocess.Popen) -> int | None:
    """None once the companion is ready; its exit code if it died first (or 1 if it never got ready)."""
    deadline = time.monotonic() + companion.ready_s
    while not companion.ready_file.exists():
        if child.poll() is not None:
            return _exit_code(child.returncode)
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.1)
    return None


def _stop(children: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
    for child in children:
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def run_logged(command: Sequence[str], env: dict[str, str], logger: logging.Logger,
               companions: Sequence[Companion] = ()) -> int:
    """Run ``command`` in its own process group once its ``companions`` are ready, each line any of them (or a
    process they start) writes going to ``logger``; SIGTERM, SIGINT and SIGHUP to this process go to every group.
    When one of them exits the others are stopped. Returns the exit code of the first to exit (128 + N when
    signal N killed it; a companion that never got ready counts as 1).
    """
    children: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        for companion in companions:
            children.append(_spawn(companion.command, env, logger, readers))
            if (code := _await_ready(companion, children[-1])) is not None:
                logger.error(f"the {companion.name} did not get ready (exit code {code}); stopping")
                return code
        children.append(_spawn(command, env, logger, readers))
        while (ended := next((c for c in children if c.poll() is not None), None)) is None:
            time.sleep(0.2)
        if stopping.is_set():  # told to stop: the daemon's own exit code says how the stop went
            with contextlib.suppress(subprocess.TimeoutExpired):  # one that hangs is killed below
                children[-1].wait(STOP_GRACE_S)
            return _exit_code(children[-1].returncode if children[-1].returncode is not None else 1)
        if ended is not children[-1]:
            name = companions[children.index(ended)].name
            logger.error(f"the {name} exited with code {_exit_code(ended.returncode)}; stopping the rest")
        return _exit_code(ended.returncode)
    finally:
        _stop(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        deadline = time.monotonic() + OUTPUT_GRACE_S  # a process a child left behind may hold a pipe open
        for reader in readers:
            reader.join(max(deadline - time.monotonic(), 0.0))
        for handler in logger.handlers:
            handler.close()
