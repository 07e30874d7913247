"""Helpers for the deployment tests: free loopback ports, PEM files of generated certificates, a small TLS
server on 127.0.0.1 that presents a given certificate (to provoke each preflight failure for real), the server
as its operator starts it (`fedrt server start`: SuperLink behind the TLS proxy), and a real deployment (server +
registered SuperNodes on linked real patients) started and stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from external import NGINX, missing

from client.supernode import NodeSettings
from fedrt.commands import run as run_command
from protocols.errors import DeploymentError
from server.certs import create_node_keys, init_certificates, issue_operator_credential
from server.nodes import SuperLinkControl
from server.proxy import nginx_executable
from server.superlink import SuperLinkSettings, start_superlink
from wire.control import ControlAccess
from wire.endpoint import Endpoint
from wire.processes import descendants, start_process, stop_process, wait_until_listening


def start_node(settings: NodeSettings, log_path: Path) -> subprocess.Popen:
    """A hospital's node as its operator starts one, `fedrt node start` (it becomes the SuperNode), in the
    background in its own process group.
    """
    flags = ["--superlink", str(settings.superlink), "--data", str(settings.data), "--protocol", settings.protocol,
             "--runtime-port", str(settings.runtime_port)]
    for flag, value in (("--ca", settings.ca), ("--key", settings.key), ("--site-name", settings.site_name),
                        ("--state", settings.state_dir)):
        if value is not None:
            flags += [flag, str(value)]
    if settings.insecure:
        flags.append("--insecure")
    if not settings.worker:
        flags.append("--no-worker")
    return start_process([sys.executable, "-m", "fedrt.cli", "node", "start", *flags], dict(os.environ), log_path)


@contextlib.contextmanager
def insecure_superlink(state_dir: Path) -> Iterator[Endpoint]:
    """A real ``--insecure`` SuperLink (no TLS: local tests only) on 127.0.0.1, stopped by PID on exit."""
    settings = SuperLinkSettings(state_dir, None, "127.0.0.1", free_port(), insecure=True)
    proc = start_superlink(settings)
    try:
        wait_until_listening(proc, "127.0.0.1", settings.port, state_dir / "superlink.console.log")
        yield Endpoint("127.0.0.1", settings.port)
    finally:
        stop_process(proc)


def wait_for(condition, timeout_s: float, what: str):
    """``condition()``'s first true value, polled; an AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def start_server(settings: SuperLinkSettings, log_path: Path) -> subprocess.Popen:
    """The aggregation server as its operator starts one, `fedrt server start` (the SuperLink on loopback behind
    nginx on the public port, as one service), in the background in its own process group; returns once the public
    port answers (the proxy starts after the SuperLink listens). Skips the test without nginx (fails under CI).
    """
    try:
        nginx_executable()
    except DeploymentError:
        missing("nginx", NGINX)
    proc = start_process([sys.executable, "-m", "fedrt.cli", "server", "start", "--certs", str(settings.certs_dir),
                          "--host", settings.host, "--port", str(settings.port), "--internal-port",
                          str(settings.internal_port), "--state", str(settings.state_dir)], dict(os.environ),
                         log_path)
    try:
        wait_until_listening(proc, settings.host, settings.port, log_path, timeout_s=90)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def server_settings(root: Path) -> SuperLinkSettings:
    """A server on 127.0.0.1 with the certificates in ``root/certs`` and its state in ``root/state``."""
    return SuperLinkSettings(root / "state", root / "certs", "127.0.0.1", free_port(), internal_port=free_port())


def operator_access(root: Path, endpoint: Endpoint) -> ControlAccess:
    """An operator's access to the server at ``endpoint``: the CA in ``root/certs`` and a credential it issues."""
    return ControlAccess(endpoint, root / "certs" / "ca.crt",
                         issue_operator_credential(root / "certs", "operator", root / "operator"))


def operator_flags(access: ControlAccess) -> list[str]:
    """``--superlink --ca --operator``: how an operator's command reaches the server ``access`` names."""
    return ["--superlink", str(access.endpoint), "--ca", str(access.ca), "--operator", str(access.operator)]


def server_parts(server: subprocess.Popen) -> dict[str, int]:
    """The PIDs of a running server's parts by program: ``flower-superlink`` and ``nginx`` (its master)."""
    parts = {}
    for pid, _ in descendants(server.pid):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if command[0].startswith(b"nginx: master"):
                parts["nginx"] = pid
            elif any(arg.endswith(b"/flower-superlink") for arg in command[:2]):
                parts["flower-superlink"] = pid
    return parts


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_pem(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """``folder/NAME.crt`` and ``folder/NAME.key`` for a certificate and its key."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class LoopbackServer:
    """A server on 127.0.0.1 that completes a TLS handshake with ``cert``/``key`` (or, without them, accepts
    TCP and answers garbage, like a service that is not TLS) for every connection, until closed.
    """

    def __init__(self, cert: Path | None = None, key: Path | None = None):
        self.context = None
        if cert is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    if self.context is None:
                        conn.recv(1024)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\nnot tls\r\n")
                    else:
                        with self.context.wrap_socket(conn, server_side=True) as tls:
                            tls.recv(1)
                except OSError:
                    pass

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on for TCP, read from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints host-order words
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def link_site(root: Path, openkbp_root: Path, train: list[str], val: list[str]) -> Path:
    """An OpenKBP-layout folder at ``root`` holding links to the given real patients."""
    for split, patients in (("train-pats", train), ("validation-pats", val)):
        (root / split).mkdir(parents=True)
        for patient in patients:
            (root / split / patient).symlink_to(openkbp_root / split / patient)
    return root


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every descendant at once, by PID (a crash: no goodbye), then reap it."""
    for pid in [proc.pid, *(pid for pid, _ in descendants(proc.pid))]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


class Deployment:
    """A server (`fedrt server start`: SuperLink with TLS and node authentication behind the proxy) on 127.0.0.1
    and one registered SuperNode per site, all started on enter and stopped (by PID, with their descendants) on exit.
    ``worker``: the nodes run their warm worker (``fedrt node start`` without ``--no-worker``).
    """

    def __init__(self, tmp_path: Path, sites: dict[str, Path], worker: bool = True):
        self.tmp_path, self.sites, self.worker = tmp_path, sites, worker
        self.certs = init_certificates(tmp_path / "certs", ["fl.example.org"])
        self.settings = server_settings(tmp_path)
        self.access = operator_access(tmp_path, self.endpoint)
        self.started: list[subprocess.Popen] = []
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_settings: dict[str, NodeSettings] = {}

    @property
    def endpoint(self) -> Endpoint:
        """The server's public port on loopback."""
        return self.settings.public

    @property
    def flags(self) -> list[str]:
        """How an operator's command (`fedrt run`) reaches this server."""
        return operator_flags(self.access)

    def __enter__(self) -> Deployment:
        try:
            self.started.append(start_server(self.settings, self.tmp_path / "server.log"))
            with SuperLinkControl(self.access) as control:
                for name, data in self.sites.items():
                    keys = create_node_keys(name, self.tmp_path / "keys")
                    control.register(keys.public_key, name)
                    node = NodeSettings(self.endpoint, self.certs.ca_cert, keys.private_key, data, site_name=name,
                                        runtime_port=free_port(), state_dir=self.tmp_path / f"{name}-state",
                                        worker=self.worker)
                    self.node_settings[name] = node
                    self._start_node(name)
                self.wait_online(control, 60, "come online")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.started):
            stop_process(proc)

    def wait_online(self, control: SuperLinkControl, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(n.status == "online" for n in control.nodes()) < len(self.sites):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the SuperNodes did not {what}; see {self.tmp_path}/*.log")
            time.sleep(0.5)

    def kill_superlink(self) -> None:
        """Kill the server (SuperLink, proxy) and the ServerApp it runs at once (SIGKILL by PID: the server machine
        crashed).
        """
        kill_tree(self.started[0])

    def restart_superlink(self) -> None:
        """Start the server again on the same ports and state folder; wait until every site is back online."""
        self.started[0] = start_server(self.settings, self.tmp_path / "server.log")
        with SuperLinkControl(self.access) as control:
            self.wait_online(control, 120, "reconnect")

    def _start_node(self, name: str) -> None:
        self.nodes[name] = start_node(self.node_settings[name], self.tmp_path / f"{name}.log")
        self.started.append(self.nodes[name])

    def restart_node(self, name: str) -> None:
        """Start site ``name``'s node again, as its operator (or systemd) would after a crash."""
        self._start_node(name)

    def kill_node(self, name: str) -> None:
        """Kill site ``name``'s SuperNode and the apps it started at once (SIGKILL by PID: a crash, no goodbye)."""
        kill_tree(self.nodes[name])

    def wait_for_app(self, name: str, timeout_s: float) -> None:
        """Block until site ``name``'s SuperNode runs a ClientApp (it received work from the ServerApp)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid, _ in descendants(self.nodes[name].pid):
                with contextlib.suppress(OSError):
                    if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return
            time.sleep(0.2)
        raise TimeoutError(f"site {name} ran no ClientApp within {timeout_s:g} s; see {self.tmp_path}/{name}.log")


def fedrt_run(argv: list[str]) -> int:
    """``fedrt run ARGV`` through the command module (as ``fedrt/cli.py`` dispatches it)."""
    parser = argparse.ArgumentParser(prog="fedrt")
    run_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv])
    return args.run(args)


def smoke_overrides(tmp_path: Path, server_data: Path, rounds: int = 2) -> list[str]:
    """A smoke-size run of ``rounds`` rounds on 2 sites, tracked in a SQLite MLflow store under ``tmp_path``."""
    return ["preset=smoke", f"data.root={server_data}", "num_sites=2", f"rounds={rounds}", "data.max_val_cases=1",
            "federation.local_epochs=1", "train.steps_per_epoch=2", "train.threads=1", "federation.node_wait_s=120",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"output={tmp_path / 'federated.pt'}"]


def two_sites(tmp_path: Path, openkbp_root: Path) -> dict[str, Path]:
    """site-a and site-b with two training and one validation patient each (real OpenKBP patients)."""
    return {"site-a": link_site(tmp_path / "site-a", openkbp_root, ["pt_1", "pt_2"], ["pt_201"]),
            "site-b": link_site(tmp_path / "site-b", openkbp_root, ["pt_3", "pt_4"], ["pt_202"])}
