"""The aggregation server's Flower SuperLink: one HTTPS port (Fleet, Control and Runtime APIs) with TLS from
``fedrt certs init``, node authentication on, state persisted in a database, and no package downloads at
run time (sites and server may be offline). ``--insecure`` exists for local tests only and binds to loopback.
It runs in its state folder, so the ServerApp's relative paths (``mlflow.db``, ``mlruns/``, ``runs/``) land there.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from protocols.errors import ConfigError
from server.certs import ServerFiles, verify_server_files
from wire.endpoint import Endpoint
from wire.identity import certificate_names
from wire.processes import exec_process, flower_environment, flower_executable, start_process

DEFAULT_PORT = 9092
DEFAULT_HOST = "0.0.0.0"
INSECURE_HOST = "127.0.0.1"
RULE = "!" * 100


@dataclass(frozen=True)
class SuperLinkSettings:
    """How to run the SuperLink: bind address, certificates folder, state folder, and the test-only switch.

    ``simulation``: Flower's simulation runtime instead of real nodes (``fedrt simulate``: virtual hospitals on
    this machine, loopback only); ``workdir``: where the ServerApp runs, the state folder unless given.
    """

    state_dir: Path
    certs_dir: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    insecure: bool = False
    simulation: bool = False
    workdir: Path | None = None

    @property
    def database(self) -> Path:
        """Registered nodes, runs and their messages: kept across restarts."""
        return self.state_dir / "superlink.db"

    @property
    def log_file(self) -> Path:
        """Flower's own log, rotated daily (7 kept)."""
        return self.state_dir / "superlink.log"

    @property
    def flwr_home(self) -> Path:
        """Flower's home for this SuperLink (apps it received), inside the state folder."""
        return self.state_dir / "flwr-home"


def insecure_banner(settings: SuperLinkSettings) -> str:
    """The warning ``--insecure`` prints: what is off, who can join, and that it is for local tests only."""
    return (f"{RULE}\nINSECURE SUPERLINK, FOR LOCAL TESTING ONLY: no TLS and no node authentication.\n"
            f"Model weights and metrics travel unencrypted, and ANY process that reaches "
            f"{settings.host}:{settings.port} can join as a hospital.\nNever use it with patient data or across "
            f"a network; run `fedrt server start --certs DIR` for a real deployment.\n{RULE}")


def check_settings(settings: SuperLinkSettings) -> list[str]:
    """Refuse settings that would be unsafe or cannot work; return the notes worth printing at start."""
    if settings.insecure:
        Endpoint(settings.host, settings.port).require_loopback("--insecure")
        return [insecure_banner(settings)]
    if settings.certs_dir is None:
        raise ConfigError("give --certs DIR (created with `fedrt certs init --out DIR --host NAME`), or --insecure for "
                          "a local test")
    cert = verify_server_files(settings.certs_dir)
    expires = cert.not_valid_after_utc
    notes = [f"TLS certificate for {', '.join(certificate_names(cert))}, valid until {expires:%Y-%m-%d}; node "
             "authentication on"]
    if expires - dt.datetime.now(dt.UTC) < dt.timedelta(days=30):
        notes.append(f"WARNING: the server certificate expires on {expires:%Y-%m-%d}; renew it now with `fedrt certs "
                     f"renew --out {settings.certs_dir} --host ...` and restart")
    return notes


def superlink_command(settings: SuperLinkSettings) -> list[str]:
    """The ``flower-superlink`` command line for ``settings``."""
    command = [flower_executable("flower-superlink"), "--host", settings.host, "--port", str(settings.port),
               "--database", str(settings.database.resolve()), "--log-file", str(settings.log_file.resolve()),
               "--disable-runtime-dependency-installation"]
    if settings.simulation:
        command.append("--simulation")
    if settings.insecure:
        return [*command, "--insecure"]
    files = ServerFiles.under(settings.certs_dir.resolve())
    return [*command, "--ssl-ca-certfile", str(files.ca_cert), "--ssl-certfile", str(files.server_cert),
            "--ssl-keyfile", str(files.server_key), "--enable-supernode-auth"]


def prepare_state(settings: SuperLinkSettings) -> None:
    """Create the state folder (owner-only: it holds the registered keys and every run's messages)."""
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.flwr_home.mkdir(mode=0o700, exist_ok=True)


def start_superlink(settings: SuperLinkSettings, console_log: Path | None = None,
                    environment: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the SuperLink in the background (own process group); stop it with ``wire.processes.stop_process``.
    ``environment`` adds variables for it and the apps it starts.
    """
    check_settings(settings)
    prepare_state(settings)
    return start_process(superlink_command(settings), {**flower_environment(settings.flwr_home), **(environment or {})},
                         console_log or settings.state_dir / "superlink.console.log",
                         cwd=settings.workdir or settings.state_dir)


def run_superlink(settings: SuperLinkSettings) -> NoReturn:
    """Check the settings, print what runs, then become the SuperLink (foreground, for a service manager)."""
    for note in check_settings(settings):
        print(note, file=sys.stderr)
    prepare_state(settings)
    endpoint = Endpoint(settings.host, settings.port)
    print(f"fedrt server: SuperLink on {endpoint} ({'INSECURE' if settings.insecure else 'TLS'}), state in "
          f"{settings.state_dir}; hospitals connect out to this single port", file=sys.stderr)
    exec_process(superlink_command(settings), flower_environment(settings.flwr_home), cwd=settings.state_dir)
