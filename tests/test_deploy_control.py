"""The locked control plane, with real processes on 127.0.0.1: ``fedrt server start`` opens one public port (nginx)
in front of a SuperLink on loopback. Without an operator credential, listing nodes and registering a key through
that port fail (raw HTTPS requests, as curl sends them); with one they work, and a node registered with it joins;
submitting and stopping a run need it too. (That registered nodes train: ``test_deploy_e2e.py``, whose nodes are
registered the same way.) Stopping either part stops the whole service. Every process is started and stopped
here, by PID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deploy_fixtures import (
    free_port,
    operator_access,
    operator_flags,
    server_parts,
    server_settings,
    start_node,
    start_server,
    wait_for,
    write_pem,
)
from flwr.proto.control_pb2 import ListNodesRequest, ListRunsRequest, RegisterNodeRequest
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from client.supernode import NodeSettings
from fedrt.cli import main
from protocols.errors import ConfigError, DeploymentError
from server.certs import create_node_keys, init_certificates, issue_operator_credential, load_ca
from server.journal import JOURNAL_DIR, STOPPED, RunJournal
from server.nodes import SuperLinkControl, load_node_public_key
from server.proxy import nginx_executable, proxy_config
from server.superlink import SuperLinkSettings, check_settings
from wire.control import REFUSAL_HEADER, ControlAccess
from wire.processes import descendants, stop_process

LIST, REGISTER = "/v1/control/list-nodes", "/v1/control/register-node"


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[tuple[SuperLinkSettings, ControlAccess, subprocess.Popen]]:
    """`fedrt server start` with a new CA on free loopback ports, and an operator's access; stopped by PID."""
    init_certificates(root / "certs", ["fl.example.org"])
    settings = server_settings(root)
    access = operator_access(root, settings.public)
    server = start_server(settings, root / "server.log")
    try:
        yield settings, access, server
    finally:
        stop_process(server)


def post(access: ControlAccess, path: str, body: bytes, credential: tuple[Path, ...] = ()) -> tuple[int, str]:
    """A raw HTTPS POST of a protobuf body to the public port, as `curl --cacert CA [--cert ...]` sends it:
    the status and the proxy's refusal header.
    """
    context = ssl.create_default_context(cafile=str(access.ca))
    if credential:
        context.load_cert_chain(*map(str, credential))
    connection = http.client.HTTPSConnection(access.endpoint.host, access.endpoint.port, context=context, timeout=10)
    try:
        connection.request("POST", path, body, {"content-type": "application/protobuf"})
        response = connection.getresponse()
        response.read()
        return response.status, response.headers.get(REFUSAL_HEADER, "")
    finally:
        connection.close()


def client_certificate_without_the_operator_unit(root: Path) -> tuple[Path, Path]:
    """A client certificate the federation's CA signed but did not mark as an operator's (no OU)."""
    ca_cert, ca_key = load_ca(root / "certs")
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return write_pem(root / "mallory", "no-unit", cert, key)


def refused_credentials(root: Path) -> dict[str, tuple[tuple[Path, ...], str]]:
    """Every kind of credential that must not open the Control API, with the reason the proxy gives."""
    init_certificates(root / "other-ca", ["evil.example.org"])
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    certs = root / "certs"
    return {
        "none": ((), "no operator credential"),
        "the server's own certificate": (
            (certs / "server.crt", certs / "server.key"), "unsuitable certificate purpose"),
        "an operator credential of another CA": (
            (issue_operator_credential(root / "other-ca", "mallory", root / "mallory"),), "unable to verify"),
        "an expired operator credential": (
            (issue_operator_credential(certs, "old", root / "old", days=1, valid_from=long_ago),), "expired"),
        "a client certificate of the CA without the operator unit": (
            client_certificate_without_the_operator_unit(root), "not an operator's"),
    }


def test_without_an_operator_credential_listing_and_registering_fail_with_one_they_work(tmp_path, capsys):
    with running_server(tmp_path) as (settings, access, _server):
        keys = create_node_keys("site-x", tmp_path / "keys")
        register = RegisterNodeRequest(public_key=public_key_to_bytes(load_node_public_key(keys.public_key)),
                                       name="site-x").SerializeToString()
        for what, (credential, reason) in refused_credentials(tmp_path).items():
            for path, body in ((LIST, ListNodesRequest().SerializeToString()), (REGISTER, register)):
                status, refusal = post(access, path, body, credential)
                assert (status, reason in refusal) == (403, True), (what, path, status, refusal)
        with SuperLinkControl(access) as control:
            assert control.nodes() == []  # no refused call reached the SuperLink

        status, _ = post(access, REGISTER, register, (access.operator,))
        assert status == 200
        with SuperLinkControl(access) as control:
            (node,) = control.nodes()
            assert node.name == "site-x"
            # the node registered through the public port joins through it
            (tmp_path / "data").mkdir()
            proc = start_node(NodeSettings(access.endpoint, access.ca, keys.private_key, tmp_path / "data",
                                           site_name="site-x", runtime_port=free_port(),
                                           state_dir=tmp_path / "node-state"), tmp_path / "node.log")
            try:
                deadline = time.monotonic() + 60
                while control.find("site-x").status != "online":
                    assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "node.log").read_text()
                    time.sleep(0.5)
            finally:
                stop_process(proc)
        assert post(access, LIST, b"", (access.operator,))[0] == 200

        # nothing else is reachable: the SuperLink's Runtime API and every other path answer 404
        for path in ("/v1/runtime/get-nodes", "/", "/docs"):
            assert post(access, path, b"", (access.operator,))[0] == 404

        # fedrt's operator commands say in one line what is missing or refused, and how to get a credential
        address = operator_flags(access)[:4]
        capsys.readouterr()
        assert main(["server", "nodes", *address]) == 2
        assert re.fullmatch(r"fedrt server: error: give --operator NAME\.pem: .*`fedrt certs operator NAME .*\n",
                            capsys.readouterr().err)
        assert main(["server", "nodes", *address, "--operator", str(tmp_path / "old" / "old.pem")]) == 2
        assert re.fullmatch(r"fedrt server: error: .* refused the Control API call ListNodes: .*certificate has "
                            r"expired.*`fedrt certs operator NAME .*\n", capsys.readouterr().err)

        # submitting and stopping a run take the credential too
        assert main(["run", "preset=smoke", *address, "--detach"]) == 2
        assert "give --operator" in capsys.readouterr().err
        assert main(["run", "preset=smoke", *operator_flags(access), "--detach"]) == 0
        run_id = int(re.search(r"submitted run (\d+)", capsys.readouterr().out).group(1))
        journal = RunJournal(settings.state_dir / JOURNAL_DIR)
        wait_for(lambda: [e for e in journal.entries() if e.flower_run_id == run_id], 120, "the run's journal entry")
        assert main(["server", "stop-run", str(run_id), *operator_flags(access)]) == 0
        client = access.client()
        try:
            status = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id].status
        finally:
            client.close()
        assert (status.status, status.sub_status) == ("finished", "stopped")

        # an operator's stop is not a crash: a restarted server resumes nothing, and its journal says why
        stop_process(_server)
        again = start_server(settings, tmp_path / "server-again.log")
        try:
            wait_for(lambda: journal.interrupted() == [], 60, "the restarted server to go through its journal")
            assert [e.status for e in journal.entries() if e.flower_run_id == run_id] == [STOPPED]
            client = access.client()
            try:
                assert list(client.ListRuns(ListRunsRequest()).run_dict) == [run_id]  # nothing resubmitted
            finally:
                client.close()
        finally:
            stop_process(again)


def _gone(pids: list[tuple[int, int]], timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid, _ in pids):
            return True
        time.sleep(0.2)
    return False


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_server_is_one_service_a_crash_of_either_part_or_of_the_service_or_sigterm_stops_both(tmp_path):
    with running_server(tmp_path) as (settings, _, server):
        started = descendants(server.pid)
        os.kill(server_parts(server)["flower-superlink"], signal.SIGKILL)
        assert server.wait(30) == 2
        assert _gone(started) and _closed(settings.port) and _closed(settings.internal_port)
        assert "the SuperLink exited with code -9, so the server stopped" in (tmp_path / "server.log").read_text()

    with running_server(tmp_path / "again") as (settings, _, server):
        started = descendants(server.pid)
        os.kill(server_parts(server)["nginx"], signal.SIGKILL)  # its workers outlive it: the service stops them
        assert server.wait(30) == 2
        assert _gone(started) and _closed(settings.port) and _closed(settings.internal_port)

    with running_server(tmp_path / "third") as (settings, _, server):
        started = descendants(server.pid)
        os.kill(server.pid, signal.SIGTERM)  # the service manager stops the service: only its main process is told
        assert server.wait(30) == 0
        assert _gone(started) and _closed(settings.port) and _closed(settings.internal_port)
        log = (tmp_path / "third" / "server.log").read_text()
        assert "SIGTERM received; stopping the proxy and the SuperLink" in log

    with running_server(tmp_path / "fourth") as (settings, _, server):
        started = descendants(server.pid)
        os.kill(server.pid, signal.SIGKILL)  # no goodbye: the kernel sends both parts SIGTERM
        assert server.wait(30) == -signal.SIGKILL
        assert _gone(started) and _closed(settings.port) and _closed(settings.internal_port)


def test_what_the_proxy_cannot_work_with_is_refused_before_anything_starts(tmp_path, monkeypatch):
    init_certificates(tmp_path / "certs", ["fl.example.org"])
    with pytest.raises(ConfigError, match="--internal-port 9092 is the public --port"):
        check_settings(SuperLinkSettings(tmp_path / "state", tmp_path / "certs", port=9092, internal_port=9092))
    with pytest.raises(ConfigError, match="may not hold"):
        proxy_config(SuperLinkSettings(tmp_path / "st$ate", tmp_path / "certs"))
    monkeypatch.setattr(shutil, "which", lambda *_, **__: None)
    with pytest.raises(DeploymentError, match="apt-get install nginx"):
        nginx_executable()
