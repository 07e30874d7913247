"""The node's log: a real ``fedrt node start`` writes timestamped lines (Flower's own carry none) to
``supernode.log`` in its state folder, rotated by size, and still stops, with everything it started, on a
SIGTERM to its PID; the supervisor under it forwards signals, passes exit codes on and never leaves its
daemon behind. Every process is started here and stopped here, by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_fixtures import free_port, insecure_superlink, start_node, wait_for

from client.supernode import NodeSettings
from server.nodes import SuperLinkControl
from wire.control import ControlAccess
from wire.processes import descendants, start_process, stop_process, stop_recorded
from wire.supervise import LogRotation, daemon_logger, run_logged

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _command_line(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def test_a_node_logs_timestamped_lines_in_its_state_folder_and_stops_on_sigterm_to_its_pid(tmp_path):
    (tmp_path / "data").mkdir()
    with insecure_superlink(tmp_path / "server") as endpoint:
        settings = NodeSettings(endpoint, None, None, tmp_path / "data", runtime_port=free_port(),
                                state_dir=tmp_path / "node", insecure=True)
        node = start_node(settings, tmp_path / "node.console.log")
        tree: list[tuple[int, int]] = []
        try:
            with SuperLinkControl(ControlAccess(endpoint, insecure=True)) as control:
                wait_for(lambda: any(n.status == "online" for n in control.nodes()), 60, "the node online")
            tree = descendants(node.pid)
            assert any(b"flower-supernode" in _command_line(pid) for pid, _ in tree), "it runs under fedrt"

            os.kill(node.pid, signal.SIGTERM)  # the PID only, as `kill PID` or systemd's KillMode=mixed
            assert node.wait(timeout=30) == 0, "a clean stop, not a failure for the service manager"
            wait_for(lambda: not any(_alive(pid) for pid, _ in tree), 15, "the node's processes to exit")
        finally:
            stop_process(node)
            stop_recorded(tree)
    lines = settings.log_file.read_text().splitlines()
    assert settings.log_file == tmp_path / "node" / "supernode.log"
    assert all(STAMP.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert "fedrt node: SuperNode connecting out to" in text and "INSECURE SUPERNODE" in text
    assert "Starting Flower SuperNode" in text, "Flower's own lines are in the log"
    assert "\x1b" not in text, "Flower's colour codes are stripped"
    assert "Starting Flower SuperNode" in (tmp_path / "node.console.log").read_text(), "and on the console"


def _printer(lines: int, code: int) -> list[str]:
    """A child that prints ``lines`` coloured lines (half to stderr) and exits with ``code``."""
    script = (f"import sys\nfor i in range({lines}):\n"
              "    print(f'\\x1b[92mINFO\\x1b[0m :  line {i:05d} ' + 'x' * 60, file=(sys.stdout, sys.stderr)[i % 2])\n"
              f"sys.exit({code})")
    return [sys.executable, "-c", script]


def test_the_log_rotates_by_size_keeping_the_configured_number_of_files(tmp_path):
    log = tmp_path / "supernode.log"
    assert run_logged(_printer(2000, 7), dict(os.environ), daemon_logger(log, LogRotation(20_000, 2))) == 7
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["supernode.log", "supernode.log.1", "supernode.log.2"]
    assert all(f.stat().st_size <= 20_000 for f in files)
    lines = [line for f in (files[2], files[1], files[0]) for line in f.read_text().splitlines()]
    assert all(STAMP.match(line) and "\x1b" not in line for line in lines)
    numbers = [int(line.split("line ")[1][:5]) for line in lines]
    assert numbers == list(range(numbers[0], 2000)), "the newest lines are kept, none lost within the kept files"


SUPERVISOR = ("import os, sys\n"
              "from pathlib import Path\n"
              "from wire.supervise import LogRotation, daemon_logger, run_logged\n"
              "child = [sys.executable, '-c', sys.argv[2]]\n"
              "sys.exit(run_logged(child, dict(os.environ), daemon_logger(Path(sys.argv[1]), LogRotation())))\n")
TRAP = ("import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('child got SIGTERM'), sys.exit(3)))\n"
        "print('child ready')\n"
        "time.sleep(60)\n")


def _supervised(tmp_path: Path, child: str) -> tuple[subprocess.Popen, tuple[int, int]]:
    """A supervisor process running ``child`` under :func:`run_logged`, once the child said it is ready."""
    log = tmp_path / "child.log"
    proc = start_process([sys.executable, "-c", SUPERVISOR, str(log), child], dict(os.environ), tmp_path / "out.log")
    wait_for(lambda: log.exists() and "child ready" in log.read_text(), 20, "the child to start")
    [child_process] = descendants(proc.pid)
    return proc, child_process


def test_sigterm_to_the_supervisor_reaches_the_daemon_once_and_its_exit_code_comes_back(tmp_path):
    proc, (child, _) = _supervised(tmp_path, TRAP)
    try:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 3
    finally:
        stop_process(proc)
    assert not _alive(child)
    assert (tmp_path / "child.log").read_text().count("child got SIGTERM") == 1


def test_the_daemon_does_not_outlive_a_killed_supervisor(tmp_path):
    proc, child = _supervised(tmp_path, "import time\nprint('child ready')\ntime.sleep(60)\n")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: not _alive(child[0]), 10, "the orphaned child to exit")
    finally:
        stop_process(proc)
        stop_recorded([child])


@pytest.mark.parametrize("flags", [["--log-max-mb", "0"], ["--log-backups", "0"]])
def test_rotation_settings_that_would_not_bound_the_log_are_refused(tmp_path, flags, capsys):
    from fedrt.cli import main

    assert main(["node", "start", "--insecure", "--superlink", "127.0.0.1:1", "--data", str(tmp_path), *flags]) == 2
    assert "--log-max-mb must be positive and --log-backups at least 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing started, no log written"
