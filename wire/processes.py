"""Run Flower's daemons (``flower-superlink``, ``flower-supernode``) from this environment: find the
executables next to this Python, give them an environment that finds their helpers (``flower-superexec``),
and stop exactly the processes one started (its process group and recorded descendants, by PID).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from protocols.errors import DeploymentError


def flower_executable(name: str) -> str:
    """The absolute path of a Flower executable in this environment (its bin folder first, then PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} not found next to {sys.executable} or on PATH; install fedrt's "
                              "dependencies (flwr) into this environment")
    return found


# Flower's daemons otherwise send usage events to telemetry.flower.ai and check api.flower.ai for updates:
# a hospital's node must talk to the SuperLink and nothing else.
QUIET_FLOWER = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def flower_environment(flwr_home: Path | None = None) -> dict[str, str]:
    """The current environment with Flower's bin folder first on PATH (the daemons start ``flower-superexec`` by
    name), Flower's telemetry and update check off, and, when given, ``FLWR_HOME`` (Flower's own files).
    """
    env = {**os.environ, **QUIET_FLOWER}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def start_process(command: Sequence[str], env: dict[str, str], log_path: Path,
                  cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` in its own process group (in ``cwd``), its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(command), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_listening(proc: subprocess.Popen, host: str, port: int, log_path: Path,
                         timeout_s: float = 60.0) -> None:
    """Wait until ``proc`` accepts TCP connections on ``host:port``; an error quoting its log if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise DeploymentError(f"{proc.args[0]} exited with code {proc.returncode} before listening on "
                                  f"{host}:{port}; its log ({log_path}) ends:\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{proc.args[0]} did not listen on {host}:{port} within {timeout_s:.0f} s; see {log_path}")


def exec_process(command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> NoReturn:
    """Replace this process with ``command``, run in ``cwd`` (a foreground daemon: signals from the terminal or a
    service manager reach it directly).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if cwd is not None:
        os.chdir(cwd)
    os.execve(command[0], list(command), env)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process from /proc, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every live descendant of ``pid`` as (pid, start time); the start time guards against PID reuse."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _signal_if_same(pid: int, start: int, sig: int) -> bool:
    stat = _proc_stat(pid)
    if stat is None or stat[1] != start:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """Stop a process started by :func:`start_process` and everything it started: SIGTERM to its process
    group, SIGKILL after ``timeout_s``, then the same for descendants that left the group. Returns its exit code.
    """
    spawned = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stop_recorded(spawned, timeout_s)
    return proc.returncode


def stop_recorded(processes: list[tuple[int, int]], timeout_s: float = 10.0) -> None:
    """Stop processes recorded by :func:`descendants` that still run (the same process: PID and start time):
    SIGTERM, SIGKILL after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    alive = [(pid, start) for pid, start in processes if _proc_stat(pid) is not None]
    for pid, start in alive:
        _signal_if_same(pid, start, signal.SIGTERM)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [(pid, start) for pid, start in alive if (s := _proc_stat(pid)) is not None and s[1] == start
                 and not _is_zombie(pid)]
    for pid, start in alive:
        _signal_if_same(pid, start, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] == "Z"
