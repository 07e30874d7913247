"""A hospital's Flower SuperNode: it connects OUT to the SuperLink over TLS (verified with the federation's
CA), authenticates with the node's private key, and runs fedrt's ClientApp on the site's own dataset, whose
location and protocol travel only in the node's local ``--node-config``. It opens no port to the network:
its runtime API (for the ClientApp it starts) listens on 127.0.0.1 only. Its output (and its ClientApps') goes,
timestamped, to ``supernode.log`` in the node's state folder, rotated by size, and to the console.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from protocols.errors import ConfigError, DataNotFoundError
from protocols.protocol import load_protocol
from wire.connection import check_plaintext
from wire.endpoint import Endpoint
from wire.identity import load_node_private_key
from wire.processes import flower_environment, flower_executable
from wire.sites import DATA_CONFIG, NAME_CONFIG, WORKER_CONFIG
from wire.supervise import Companion, LogRotation, daemon_logger, run_logged

DEFAULT_RUNTIME_PORT = 9094
WORKER_SOCKET = "worker.sock"  # the warm worker's socket, in the node's own folder
FAST_TASK_POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}  # Flower's SuperExec looks for new tasks every 1 s
RULE = "!" * 100
PROBE_TIMEOUT_S = 5.0  # `node start --insecure` asks whether the server speaks TLS; a server down is no reason to wait


@dataclass(frozen=True)
class NodeSettings:
    """Everything ``node start`` and ``node check`` take: where the server is, how to trust and authenticate
    to it, and the site's dataset and protocol.
    """

    superlink: Endpoint
    ca: Path | None
    key: Path | None
    data: Path
    protocol: str = "hn-openkbp"
    site_name: str | None = None
    runtime_port: int = DEFAULT_RUNTIME_PORT
    state_dir: Path | None = None
    insecure: bool = False
    log_rotation: LogRotation = field(default_factory=LogRotation)
    worker: bool = True  # run the warm worker (``client.worker``) beside the SuperNode

    @property
    def home(self) -> Path:
        """The node's own folder: ``--state``, else Flower's home (``$FLWR_HOME``, default ``~/.flwr``)."""
        from flwr.supercore.utils import get_flwr_home

        return self.state_dir or get_flwr_home()

    @property
    def log_file(self) -> Path:
        """The node's log, in its own folder."""
        return self.home / "supernode.log"

    @property
    def worker_socket(self) -> Path:
        """The warm worker's socket (``client.worker``), in the node's own folder."""
        return self.home / WORKER_SOCKET


def _toml_string(key: str, value: str) -> str:
    """``key='value'`` (a TOML literal string, no escapes) or, if the value holds ``'``, ``key="value"`` with
    backslashes escaped: the forms Flower's ``--node-config`` parser reads back exactly.
    """
    if "\n" in value or ("'" in value and '"' in value):
        raise ConfigError(f"{key} {value!r}: a value may not hold both quote characters or a line break; "
                          "rename the folder")
    if "'" not in value:
        return f"{key}='{value}'"
    escaped = value.replace("\\", "\\\\")
    return f'{key}="{escaped}"'


def node_config(settings: NodeSettings) -> str:
    """The ``--node-config`` string: the dataset folder, the protocol, the warm worker's socket (unless it runs
    without one) and (when set) the site's name.
    """
    pairs = [_toml_string(DATA_CONFIG, str(settings.data.expanduser().resolve())),
             _toml_string("protocol", settings.protocol)]
    if settings.worker:
        pairs.append(_toml_string(WORKER_CONFIG, str(settings.worker_socket.resolve())))
    if settings.site_name:
        pairs.append(_toml_string(NAME_CONFIG, settings.site_name))
    return " ".join(pairs)


def check_node_settings(settings: NodeSettings) -> None:
    """Fail fast, naming the file and the fix, on what would make the SuperNode exit or retry forever."""
    if settings.insecure:
        settings.superlink.require_loopback("--insecure")
    else:
        if settings.ca is None or not settings.ca.is_file():
            raise DataNotFoundError(f"CA certificate {settings.ca} not found; give --ca with the federation's "
                                    "ca.crt from the server operator")
        if settings.key is None:
            raise ConfigError("give --key NODE.key (created with `fedrt certs node NAME --out DIR`; its NAME.pub "
                              "must be registered on the server)")
        load_node_private_key(settings.key)
    if not settings.data.is_dir():
        raise DataNotFoundError(f"dataset folder {settings.data} does not exist; give --data with the site's "
                                "protocol dataset (check it with `fedrt data check PATH`)")
    load_protocol(settings.protocol)


def insecure_banner(settings: NodeSettings) -> str:
    """The warning an ``--insecure`` node prints."""
    return (f"{RULE}\nINSECURE SUPERNODE, FOR LOCAL TESTING ONLY: no TLS, no node authentication; it talks to "
            f"{settings.superlink} unencrypted.\nNever use it with patient data.\n{RULE}")


def supernode_command(settings: NodeSettings) -> list[str]:
    """The ``flower-supernode`` command line for ``settings``."""
    command = [flower_executable("flower-supernode"), "--superlink", str(settings.superlink),
               "--node-config", node_config(settings), "--host", "127.0.0.1", "--port", str(settings.runtime_port)]
    if settings.insecure:
        return [*command, "--insecure"]
    return [*command, "--root-certificates", str(settings.ca.resolve()),
            "--auth-supernode-private-key", str(settings.key.resolve())]


def _environment(settings: NodeSettings) -> dict[str, str]:
    if settings.state_dir is not None:
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {**flower_environment(settings.state_dir), **FAST_TASK_POLL}


def worker(settings: NodeSettings) -> Companion:
    """The node's warm worker, started before the SuperNode and stopped with it."""
    settings.worker_socket.unlink(missing_ok=True)  # a socket left by a killed worker is not a ready one
    return Companion("node worker", [sys.executable, "-m", "client.worker", "--socket", str(settings.worker_socket)],
                     settings.worker_socket)


def run_supernode(settings: NodeSettings) -> int:
    """Check the settings, say what runs, then run the SuperNode in the foreground (for a service manager) until it
    exits or this process is told to stop; returns its exit code.
    """
    check_node_settings(settings)
    if settings.insecure and (plain := check_plaintext(settings.superlink, PROBE_TIMEOUT_S)).failed:
        raise ConfigError(plain.message)
    env = _environment(settings)
    log = daemon_logger(settings.log_file, settings.log_rotation)
    if settings.insecure:
        for line in insecure_banner(settings).splitlines():
            log.warning(line)
    else:
        from client.rejoin import end_previous_session  # Flower's Fleet client: not for `fedrt --help`

        end_previous_session(str(settings.superlink), settings.ca, settings.key, settings.state_dir)
    log.info(f"fedrt node: SuperNode connecting out to {settings.superlink}; data {settings.data} "
             f"(protocol {settings.protocol}); no inbound port is opened; log {settings.log_file}")
    return run_logged(supernode_command(settings), env, log, [worker(settings)] if settings.worker else [])
