"""Run Flower's daemons (``flower-superlink``, ``flower-supernode``) from this environment: find the
executables next to this Python, give them an environment that finds their helpers (``flower-superexec``),
and stop exactly the processes one started (its process group and recorded descendants, by PID).
"""

from __future__ import annotations

import contextlib
import ctypes
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


PR_SET_PDEATHSIG = 1  # prctl(2): set the signal a process gets when its parent dies
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: a forked child of a threaded parent must not load


def sigterm_with_parent() -> None:
    """In a child before it runs its program: ask Linux to send it SIGTERM when its parent dies."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_process(command: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path | None = None,
                  with_parent: bool = False) -> subprocess.Popen:
    """Start ``command`` in its own process group (in ``cwd``), its output appended to ``log_path``;
    ``with_parent``: it gets SIGTERM when this process dies (the parts of one service go together).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(command), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=sigterm_with_parent if with_parent else None)


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


def _proc_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, parent, group, ...), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process from /proc, None when it is gone."""
    fields = _proc_fields(pid)
    return None if fields is None else (int(fields[1]), int(fields[19]))


def _live_processes() -> list[tuple[int, list[str]]]:
    """Every live process as (pid, its /proc stat fields)."""
    found = [(int(e.name), _proc_fields(int(e.name))) for e in Path("/proc").iterdir() if e.name.isdigit()]
    return [(pid, fields) for pid, fields in found if fields is not None]


def _orphans(leader: int) -> list[tuple[int, int]]:
    """The processes left in the process group of ``leader``, an exited and reaped group leader, as (pid, start
    time). While the group has members Linux gives no new process the leader's PID, so a live process with that PID
    means a new one: the group is gone and nothing is ours.
    """
    if _proc_fields(leader) is not None:
        return []
    return [(pid, int(fields[19])) for pid, fields in _live_processes() if int(fields[2]) == leader]


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every live descendant of ``pid`` as (pid, start time); the start time guards against PID reuse."""
    children: dict[int, list[tuple[int, int]]] = {}
    for child, fields in _live_processes():
        children.setdefault(int(fields[1]), []).append((child, int(fields[19])))
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
    group, SIGKILL after ``timeout_s``, then the same for descendants that left the group, or, when it exited
    already, for what it left in its group (nginx's workers outlive a killed master). Returns its exit code.
    """
    spawned = descendants(proc.pid) if proc.poll() is None else _orphans(proc.pid)
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
    fields = _proc_fields(pid)
    return fields is None or fields[0] == "Z"
