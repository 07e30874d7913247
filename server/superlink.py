"""The aggregation server's Flower SuperLink: Fleet, Control and Runtime APIs on one HTTPS port, bound to
loopback behind the server's proxy (``server.proxy``), with TLS from ``fedrt certs init``, node authentication on,
state persisted in a database, and no package downloads at run time (sites and server may be offline).
``--insecure`` exists for local tests only: no proxy, the SuperLink itself on a loopback address. It runs in its
state folder, so the ServerApp's relative paths (``mlflow.db``, ``mlruns/``, ``runs/``) land there.
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
DEFAULT_INTERNAL_PORT = 9093  # the SuperLink's own port behind the proxy: 127.0.0.1 only
RULE = "!" * 100


@dataclass(frozen=True)
class SuperLinkSettings:
    """How to run the server: the public address (the proxy's; the SuperLink's own with ``insecure``), the
    SuperLink's loopback port behind the proxy, certificates folder, state folder, and the test-only switch.

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
    internal_port: int = DEFAULT_INTERNAL_PORT

    @property
    def public(self) -> Endpoint:
        """The one address the server opens to the network (the proxy's; the SuperLink's own with ``insecure``)."""
        return Endpoint(self.host, self.port)

    @property
    def superlink(self) -> Endpoint:
        """Where the SuperLink itself listens: behind the proxy on loopback, or (``insecure``) the public address."""
        return self.public if self.insecure else Endpoint(INSECURE_HOST, self.internal_port)

    @property
    def database(self) -> Path:
        """Registered nodes, runs and their messages: kept across restarts."""
        return self.state_dir / "superlink.db"

    @property
    def log_file(self) -> Path:
        """Flower's own log, rotated daily (7 kept)."""
        return self.state_dir / "superlink.log"

    @property
    def console_log(self) -> Path:
        """The SuperLink's console output when it runs in the background."""
        return self.state_dir / "superlink.console.log"

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
    if settings.internal_port == settings.port:
        raise ConfigError(f"--internal-port {settings.internal_port} is the public --port; the SuperLink behind the "
                          "proxy needs a port of its own")
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
    command = [flower_executable("flower-superlink"), "--host", settings.superlink.host,
               "--port", str(settings.superlink.port),
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
                    environment: dict[str, str] | None = None, with_parent: bool = False) -> subprocess.Popen:
    """Start the SuperLink in the background (own process group); stop it with ``wire.processes.stop_process``.
    ``environment`` adds variables for it and the apps it starts; ``with_parent``: it gets SIGTERM when this
    process dies.
    """
    check_settings(settings)
    prepare_state(settings)
    return start_process(superlink_command(settings), {**flower_environment(settings.flwr_home), **(environment or {})},
                         console_log or settings.console_log, cwd=settings.workdir or settings.state_dir,
                         with_parent=with_parent)


def run_superlink(settings: SuperLinkSettings) -> NoReturn:
    """Check the settings, print what runs, then become the SuperLink (foreground, for a service manager): the
    ``--insecure`` local test server, which needs no proxy.
    """
    for note in check_settings(settings):
        print(note, file=sys.stderr)
    prepare_state(settings)
    print(f"fedrt server: SuperLink on {settings.superlink} (INSECURE, no proxy: every API open to this machine), "
          f"state in {settings.state_dir}", file=sys.stderr)
    exec_process(superlink_command(settings), flower_environment(settings.flwr_home), cwd=settings.state_dir)
