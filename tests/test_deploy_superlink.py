"""A real deployment on 127.0.0.1: ``fedrt server start`` (``flower-superlink`` with TLS and node authentication
on loopback, behind the nginx proxy on the public port), nodes registered through its Control API with an
operator's credential, real ``flower-supernode`` processes joining (or refused), registrations kept across a
server restart. Every process is started here and stopped here, by PID, in teardown.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_fixtures import (
    free_port,
    listening_sockets,
    operator_access,
    operator_flags,
    server_parts,
    server_settings,
    start_node,
    start_server,
    wait_for,
)

from client.preflight import check_node_key, check_tls
from client.supernode import NodeSettings
from fedrt.commands import server as server_command
from server.certs import create_node_keys, init_certificates
from server.nodes import ControlError, SuperLinkControl
from server.superlink import SuperLinkSettings, check_settings, superlink_command
from wire.control import ControlAccess
from wire.endpoint import Endpoint
from wire.processes import descendants, start_process, stop_process, wait_until_listening


@dataclass
class Deployment:
    """A running server, its certificates, an operator's access, and the SuperNodes a test started (stopped at
    teardown).
    """

    root: Path
    settings: SuperLinkSettings
    access: ControlAccess
    server: subprocess.Popen | None
    supernodes: list[subprocess.Popen]

    @property
    def endpoint(self) -> Endpoint:
        return self.settings.public

    @property
    def ca(self) -> Path:
        return self.settings.certs_dir / "ca.crt"

    def start(self) -> None:
        self.server = start_server(self.settings, self.root / "server.log")

    def control(self) -> SuperLinkControl:
        return SuperLinkControl(self.access)

    def node_keys(self, name: str):
        return create_node_keys(name, self.root / "keys")

    def start_node(self, name: str, key: Path) -> tuple[subprocess.Popen, Path]:
        (self.root / "data").mkdir(exist_ok=True)
        log = self.root / f"{name}.log"
        settings = NodeSettings(self.endpoint, self.ca, key, self.root / "data", site_name=name,
                                runtime_port=free_port(), state_dir=self.root / f"{name}-state")
        proc = start_node(settings, log)
        self.supernodes.append(proc)
        return proc, log


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deployment")
    init_certificates(root / "certs", ["fl.example.org"])
    settings = server_settings(root)
    found = Deployment(root, settings, operator_access(root, settings.public), None, [])
    try:
        found.start()
        yield found
    finally:
        for proc in found.supernodes:
            stop_process(proc)
        if found.server is not None:
            stop_process(found.server)


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_server_opens_one_tls_port_and_keeps_the_superlink_on_loopback(deployment):
    command = superlink_command(deployment.settings)
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation"} <= set(command)
    assert "--insecure" not in command
    assert _flag(command, "--host") == "127.0.0.1"
    assert _flag(command, "--database") == str(deployment.settings.database.resolve())
    assert _flag(command, "--ssl-certfile").endswith("server.crt")
    assert deployment.settings.database.exists()
    parts = server_parts(deployment.server)
    assert listening_sockets(parts["nginx"]) == {("127.0.0.1", deployment.settings.port)}
    assert listening_sockets(parts["flower-superlink"]) == {("127.0.0.1", deployment.settings.internal_port)}
    assert listening_sockets(deployment.server.pid) == set()
    tls = check_tls(deployment.endpoint, deployment.ca)
    assert tls.status == "ok" and "TLSv1.3" in tls.message


def test_a_registered_node_passes_the_key_check_joins_and_is_listed_online(deployment):
    keys = deployment.node_keys("site-a")
    with deployment.control() as control:
        registered = control.register(keys.public_key, "site-a")
        assert (registered.name, registered.status) == ("site-a", "registered")
        check = check_node_key(deployment.endpoint, deployment.ca, keys.private_key)
        assert check.status == "ok", check.message
        assert registered.fingerprint in check.message
        proc, log = deployment.start_node("site-a", keys.private_key)
        node = wait_for(lambda: (n := control.find("site-a")).status == "online" and n, 60, "site-a online")
        assert node.node_id == registered.node_id
        assert proc.poll() is None, log.read_text()
        # the node opens no port to the network: only its ClientApp runtime API, on loopback (once the SuperNode
        # runs: the node's own check-in before it starts shows it online for a moment too)
        listening = wait_for(lambda: {found for pid in (proc.pid, *(pid for pid, _ in descendants(proc.pid)))
                                      for found in listening_sockets(pid)}, 60, "the SuperNode's runtime API")
        assert {address for address, _ in listening} == {"127.0.0.1"}
        with pytest.raises(ControlError, match="already registered"):
            control.register(keys.public_key, "site-a-again")


def test_an_unregistered_node_is_refused_with_a_clear_message(deployment):
    keys = deployment.node_keys("site-x")
    check = check_node_key(deployment.endpoint, deployment.ca, keys.private_key)
    assert check.failed and check.cause == "unregistered"
    assert "fedrt server register site-x.pub --name SITE" in check.message
    proc, log = deployment.start_node("site-x", keys.private_key)
    wait_for(lambda: proc.poll() is not None, 60, "the unregistered SuperNode to exit")
    assert proc.returncode != 0
    assert "Failed to activate SuperNode" in log.read_text()
    with deployment.control() as control:
        assert "site-x" not in [n.name for n in control.nodes()]


def test_unregistering_a_hospital_disconnects_its_running_node(deployment):
    keys = deployment.node_keys("site-c")
    with deployment.control() as control:
        control.register(keys.public_key, "site-c")
        proc, _ = deployment.start_node("site-c", keys.private_key)
        wait_for(lambda: control.find("site-c").status == "online", 60, "site-c online")
        control.unregister("site-c")
        assert "site-c" not in [n.name for n in control.nodes()]
    wait_for(lambda: proc.poll() is not None, 60, "the unregistered node to be cut off")
    assert check_node_key(deployment.endpoint, deployment.ca, keys.private_key).cause == "unregistered"
    with deployment.control() as control, pytest.raises(ControlError) as refused:
        control.register(keys.public_key, "site-c")  # Flower keeps every key it has seen: refused, and why
    assert "registered once and then unregistered" in str(refused.value)
    assert "`fedrt certs node NAME --out DIR`" in str(refused.value)


def test_server_nodes_command_lists_names_and_status(deployment, capsys):
    parser = argparse.ArgumentParser()
    server_command.register(parser.add_subparsers())
    flags = operator_flags(deployment.access)
    args = parser.parse_args(["server", "nodes", *flags])
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "site-a" in out and "SHA256:" in out
    args = parser.parse_args(["server", "unregister", "no-such-site", *flags])
    with pytest.raises(ControlError, match="no registered node named 'no-such-site'"):
        args.run(args)


def test_registrations_survive_a_server_restart(deployment):
    with deployment.control() as control:
        before = {n.name: n.node_id for n in control.nodes()}
    assert "site-a" in before
    stop_process(deployment.server)
    deployment.start()
    with deployment.control() as control:
        assert {n.name: n.node_id for n in control.nodes()} == before


def test_insecure_mode_is_loopback_only_and_says_so(tmp_path):
    notes = check_settings(SuperLinkSettings(tmp_path, None, "127.0.0.1", 9092, insecure=True))
    assert "INSECURE" in notes[0] and "LOCAL TESTING ONLY" in notes[0] and "ANY process" in notes[0]
    assert "--insecure" in superlink_command(SuperLinkSettings(tmp_path, None, "127.0.0.1", 9092, insecure=True))
    with pytest.raises(ValueError, match="for this machine only"):
        check_settings(SuperLinkSettings(tmp_path, None, "0.0.0.0", 9092, insecure=True))
    with pytest.raises(ValueError, match="--certs DIR"):
        check_settings(SuperLinkSettings(tmp_path, None, "0.0.0.0", 9092))


# `fedrt <args>` with only the deployment commands registered (the lead wires them into fedrt/cli.py).
CLI = ("import argparse, sys\n"
       "from fedrt.commands import node, server\n"
       "parser = argparse.ArgumentParser(prog='fedrt')\n"
       "sub = parser.add_subparsers()\n"
       "server.register(sub)\n"
       "node.register(sub)\n"
       "args = parser.parse_args(sys.argv[1:])\n"
       "sys.exit(args.run(args))\n")


def test_start_commands_become_the_daemons_and_an_insecure_local_setup_says_so(tmp_path):
    port = free_port()
    (tmp_path / "data").mkdir()
    started = []
    try:
        started.append(start_process([sys.executable, "-c", CLI, "server", "start", "--insecure", "--port", str(port),
                                      "--state", str(tmp_path / "state")], dict(os.environ), tmp_path / "server.log"))
        wait_until_listening(started[0], "127.0.0.1", port, tmp_path / "server.log")
        # the fedrt process became flower-superlink (same PID), bound to loopback only
        assert listening_sockets(started[0].pid) == {("127.0.0.1", port)}
        started.append(start_process([sys.executable, "-c", CLI, "node", "start", "--insecure", "--superlink",
                                      f"127.0.0.1:{port}", "--data", str(tmp_path / "data"), "--runtime-port",
                                      str(free_port()), "--state", str(tmp_path / "node")], dict(os.environ),
                                     tmp_path / "node.log"))
        with SuperLinkControl(ControlAccess(Endpoint("127.0.0.1", port), insecure=True)) as control:
            wait_for(lambda: any(n.status == "online" for n in control.nodes()), 60, "the insecure node online")
    finally:
        for proc in reversed(started):
            stop_process(proc)
    server_log, node_log = (tmp_path / "server.log").read_text(), (tmp_path / "node.log").read_text()
    assert "INSECURE SUPERLINK, FOR LOCAL TESTING ONLY" in server_log
    assert "INSECURE SUPERNODE, FOR LOCAL TESTING ONLY" in node_log
    assert (tmp_path / "state" / "superlink.db").exists()


def test_a_server_certificate_close_to_expiry_is_flagged_at_start(tmp_path):
    init_certificates(tmp_path / "certs", ["fl.example.org"], server_days=10)
    notes = check_settings(SuperLinkSettings(tmp_path / "state", tmp_path / "certs"))
    assert "node authentication on" in notes[0]
    assert "WARNING" in notes[1] and "certs renew" in notes[1]
