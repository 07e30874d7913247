"""``fedrt server start`` as one service: the SuperLink on loopback and the proxy on the public port, started
together and stopped together (SIGTERM, Ctrl-C, the death of this process, or either part exiting stops both),
each by PID. With ``--insecure`` (a local test) there is no proxy: this process becomes the SuperLink.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from protocols.errors import DeploymentError, FedrtError
from server.certs import ServerFiles
from server.journal import JOURNAL_DIR, RunJournal
from server.proxy import nginx_executable, proxy_folder, start_proxy
from server.resume import resume_interrupted
from server.superlink import SuperLinkSettings, check_settings, run_superlink, start_superlink
from wire.control import ControlAccess
from wire.endpoint import Endpoint
from wire.processes import stop_process, wait_until_listening
from wire.supervise import STOP_SIGNALS

_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class _Stopped(BaseException):
    """A stop signal arrived (raised from its handler, so that a start in progress is cut short too)."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _dial(endpoint: Endpoint) -> tuple[str, int]:
    """Where this machine reaches a server bound to ``endpoint`` (bound to every address: loopback)."""
    return _ANY_ADDRESS.get(endpoint.host, endpoint.host), endpoint.port


def _supervise(parts: list[tuple[str, subprocess.Popen, Path]]) -> None:
    """Return never: wait until a part exits, then raise an error naming it and its log."""
    while True:
        for name, proc, log in parts:
            if proc.poll() is not None:
                raise DeploymentError(f"{name} exited with code {proc.returncode}, so the server stopped; see {log} "
                                      "and restart `fedrt server start`")
        time.sleep(0.5)


def _resume(settings: SuperLinkSettings) -> None:
    """Resume the runs the server's previous life left unfinished (``server.resume``); a failure to do so is
    reported and the server keeps serving (the run can still be resumed by hand with ``resume=<id>``).
    """
    journal = RunJournal((settings.workdir or settings.state_dir) / JOURNAL_DIR)
    access = ControlAccess(Endpoint(*_dial(settings.superlink)), ServerFiles.under(settings.certs_dir).ca_cert,
                           local=True)
    try:
        for run_id in resume_interrupted(journal, access):
            print(f"fedrt server: resumed an interrupted run as run {run_id}", file=sys.stderr, flush=True)
    except FedrtError as error:  # an unreadable journal: the server serves on, the runs resume by hand
        print(f"fedrt server: could not resume the interrupted runs: {error}", file=sys.stderr, flush=True)


def run_server(settings: SuperLinkSettings) -> int:
    """Run the server in the foreground (for a service manager) until a stop signal: 0, or an error when a part
    exits by itself.
    """
    if settings.insecure:
        run_superlink(settings)
    notes = check_settings(settings)
    nginx_executable()  # before anything starts: how to install it
    for note in notes:
        print(note, file=sys.stderr)
    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    parts: list[tuple[str, subprocess.Popen, Path]] = []
    try:
        parts.append(("the SuperLink", start_superlink(settings, with_parent=True), settings.console_log))
        wait_until_listening(parts[0][1], *_dial(settings.superlink), settings.console_log)
        folder = proxy_folder(settings)
        parts.append(("the proxy (nginx)", start_proxy(settings, with_parent=True), folder / "error.log"))
        wait_until_listening(parts[1][1], *_dial(settings.public), folder / "error.log")
        print(f"fedrt server: public port {settings.public} (TLS; nginx): /v1/fleet/ for the hospitals' nodes, "
              f"/v1/control/ for operator credentials only, nothing else; the SuperLink on {settings.superlink} "
              f"(loopback only); state in {settings.state_dir}", file=sys.stderr, flush=True)
        _resume(settings)
        _supervise(parts)
    except _Stopped as stop:
        print(f"fedrt server: {stop} received; stopping the proxy and the SuperLink", file=sys.stderr)
        return 0
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for _, proc, _ in reversed(parts):
            stop_process(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
