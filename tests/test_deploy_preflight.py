"""``fedrt node check``: each failure, provoked for real on 127.0.0.1, gets its own cause and an actionable
message; the node's command line and settings checks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_fixtures import Deployment, LoopbackServer, free_port, insecure_superlink, start_node, write_pem

from client.preflight import check_dataset, check_network, check_tls, run_preflight
from client.supernode import NodeSettings, check_node_settings, node_config, supernode_command
from fedrt.commands import node as node_command
from protocols.errors import ConfigError, DeploymentError
from server.certs import create_node_keys, init_certificates, load_ca, make_ca, make_server_certificate
from wire.endpoint import Endpoint
from wire.processes import stop_process

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """The federation's CA and, for the TLS servers, a good certificate and one broken in each way."""
    root = tmp_path_factory.mktemp("pki")
    files = init_certificates(root / "certs", ["fl.example.org"])
    ca, ca_key = load_ca(root / "certs")
    other_ca, other_key = make_ca("elsewhere.example.org")
    paths = {"ca": files.ca_cert, "good": files.server_cert, "good.key": files.server_key}
    broken = {
        "wrong-ca": make_server_certificate(other_ca, other_key, ["fl.example.org"]),
        "expired": make_server_certificate(ca, ca_key, ["fl.example.org"], valid_from=NOW - dt.timedelta(days=60),
                                           days=30),
        "not-yet-valid": make_server_certificate(ca, ca_key, ["fl.example.org"],
                                                 valid_from=NOW + dt.timedelta(days=2)),
        "host-mismatch": make_server_certificate(ca, ca_key, ["fl.example.org"], local_names=False),
    }
    for name, (cert, key) in broken.items():
        paths[name], paths[f"{name}.key"] = write_pem(root / "broken", name, cert, key)
    expired_ca, _ = make_ca("old", valid_from=NOW - dt.timedelta(days=20), days=10)
    paths["expired-ca"], _ = write_pem(root / "broken", "expired-ca", expired_ca, other_key)
    return paths


def _tls(pki, name: str):
    with LoopbackServer(pki[name], pki[f"{name}.key"]) as server:
        return check_tls(Endpoint("127.0.0.1", server.port), pki["ca"], timeout_s=5)


def test_a_good_server_certificate_passes_with_its_names(pki):
    check = _tls(pki, "good")
    assert check.status == "ok", check.message
    assert "fl.example.org" in check.message and "TLS" in check.message


@pytest.mark.parametrize("case, words", [
    ("wrong-ca", ["wrong CA", "elsewhere.example.org", "ca.crt"]),
    ("expired", ["expired", "certs renew"]),
    ("not-yet-valid", ["not-yet-valid", "clock", "NTP"]),
    ("host-mismatch", ["host name mismatch", "fl.example.org", "127.0.0.1", "certs renew --host 127.0.0.1"]),
])
def test_each_certificate_failure_names_its_cause_and_fix(pki, case, words):
    check = _tls(pki, case)
    assert check.failed and check.cause == case
    for word in words:
        assert word in check.message, check.message


def test_the_failures_are_told_apart(pki):
    messages = {case: _tls(pki, case).message for case in ("wrong-ca", "expired", "not-yet-valid", "host-mismatch")}
    with LoopbackServer() as plain:
        messages["not-tls"] = check_tls(Endpoint("127.0.0.1", plain.port), pki["ca"], timeout_s=5).message
    messages["closed"] = check_network(Endpoint("127.0.0.1", free_port()), timeout_s=5).message
    assert len(set(messages.values())) == len(messages)
    assert "does not speak TLS" in messages["not-tls"]


def test_a_ca_bundle_during_ca_rotation_is_accepted(pki, tmp_path):
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(pki["expired-ca"].read_bytes() + pki["ca"].read_bytes())
    with LoopbackServer(pki["good"], pki["good.key"]) as server:
        check = check_tls(Endpoint("127.0.0.1", server.port), bundle, timeout_s=5)
    assert check.status == "ok", check.message


def test_a_closed_port_is_an_unreachable_host(pki):
    port = free_port()
    check = check_network(Endpoint("127.0.0.1", port), timeout_s=5)
    assert check.failed and check.cause == "unreachable"
    assert "refused" in check.message and "fedrt server start" in check.message and str(port) in check.message
    assert check_tls(Endpoint("127.0.0.1", port), pki["ca"], timeout_s=5).cause == "unreachable"


def test_a_wrong_or_expired_ca_file_is_reported_before_connecting(pki, tmp_path):
    endpoint = Endpoint("127.0.0.1", free_port())
    expired = check_tls(endpoint, pki["expired-ca"])
    assert expired.cause == "expired" and "the CA in" in expired.message
    not_ca = check_tls(endpoint, pki["good"])
    assert not_ca.cause == "wrong-ca" and "not a CA certificate" in not_ca.message
    (tmp_path / "junk.crt").write_text("not a certificate")
    assert check_tls(endpoint, tmp_path / "junk.crt").cause == "ca-file"
    assert check_tls(endpoint, tmp_path / "missing.crt").cause == "ca-file"


def _small_dataset(root: Path, openkbp_root: Path) -> Path:
    for split, patient in (("train-pats", "pt_1"), ("validation-pats", "pt_201")):
        (root / split).mkdir(parents=True)
        (root / split / patient).symlink_to(openkbp_root / split / patient)
    return root


def test_the_dataset_check_gives_the_data_check_report(tmp_path, openkbp_root):
    data = _small_dataset(tmp_path / "site", openkbp_root)
    check, report = check_dataset(data, "hn-openkbp")
    assert check.status == "ok" and "2 patients usable" in check.message
    assert "pt_1" in report and "pt_201" in report and "2 patients: 2 ok" in report
    (tmp_path / "empty").mkdir()
    empty, _ = check_dataset(tmp_path / "empty", "hn-openkbp")
    assert empty.failed and "no patients under" in empty.message
    unknown, _ = check_dataset(data, "no-such-protocol")
    assert unknown.failed


def test_node_check_command_reports_and_exits_nonzero_on_failure(pki, tmp_path, openkbp_root, capsys):
    data = _small_dataset(tmp_path / "site", openkbp_root)
    key = create_node_keys("site-a", tmp_path / "keys").private_key
    parser = argparse.ArgumentParser()
    node_command.register(parser.add_subparsers())
    port = free_port()
    args = parser.parse_args(["node", "check", "--superlink", f"127.0.0.1:{port}", "--ca", str(pki["ca"]),
                              "--key", str(key), "--data", str(data), "--timeout", "5", "--json"])
    assert args.run(args) == 1
    result = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["status"]) for c in result["checks"]] == [
        ("dataset", "ok"), ("network", "fail"), ("tls", "skip"), ("node key", "skip")]
    assert "2 patients: 2 ok" in result["report"]


def test_preflight_with_a_wrong_ca_skips_the_key_check(pki, tmp_path, openkbp_root):
    data = _small_dataset(tmp_path / "site", openkbp_root)
    key = create_node_keys("site-a", tmp_path / "keys").private_key
    with LoopbackServer(pki["wrong-ca"], pki["wrong-ca.key"]) as server:
        settings = NodeSettings(Endpoint("127.0.0.1", server.port), pki["ca"], key, data)
        checks, _ = run_preflight(settings, timeout_s=5)
    assert [c.status for c in checks] == ["ok", "ok", "fail", "skip"]
    assert checks[2].cause == "wrong-ca"


@pytest.fixture(scope="module")
def superlinks(tmp_path_factory) -> Iterator[dict[str, Endpoint | Path]]:
    """A real SuperLink with TLS and one started with --insecure, both on 127.0.0.1, and the TLS one's CA."""
    root = tmp_path_factory.mktemp("superlinks")
    with Deployment(root / "tls", {}) as tls, insecure_superlink(root / "insecure") as insecure:
        yield {"tls": tls.endpoint, "insecure": insecure, "ca": tls.certs.ca_cert}


def _node_check(superlink: Endpoint, data: Path, capsys, *flags: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    node_command.register(parser.add_subparsers())
    args = parser.parse_args(["node", "check", "--superlink", str(superlink), "--data", str(data), "--timeout", "5",
                              *flags])
    return args.run(args), capsys.readouterr().out


def test_an_insecure_check_against_a_tls_server_fails_naming_the_mismatch(superlinks, tmp_path, openkbp_root,
                                                                         capsys):
    code, out = _node_check(superlinks["tls"], _small_dataset(tmp_path / "site", openkbp_root), capsys, "--insecure")
    assert code == 1
    assert f"[FAIL] tls       TLS mismatch: the server at {superlinks['tls']} speaks TLS (certificate for " in out
    assert "drop --insecure and give --ca" in out and "ready to join" not in out


def test_an_insecure_check_against_an_insecure_server_is_ready_with_a_warning(superlinks, tmp_path, openkbp_root,
                                                                             capsys):
    code, out = _node_check(superlinks["insecure"], _small_dataset(tmp_path / "site", openkbp_root), capsys,
                            "--insecure")
    assert code == 0
    assert "[warn] tls       --insecure: " in out and "does not speak TLS" in out and "ready to join" in out


def test_a_tls_check_against_an_insecure_server_says_it_does_not_speak_tls(superlinks):
    check = check_tls(superlinks["insecure"], superlinks["ca"], timeout_s=5)
    assert check.failed and check.cause == "not-tls"
    assert f"{superlinks['insecure']} does not speak TLS" in check.message and "not --insecure" in check.message


def test_an_insecure_node_refuses_to_start_against_a_tls_server_instead_of_retrying(superlinks, tmp_path):
    (tmp_path / "data").mkdir()
    settings = NodeSettings(superlinks["tls"], None, None, tmp_path / "data", runtime_port=free_port(),
                            state_dir=tmp_path / "node", insecure=True)
    node = start_node(settings, tmp_path / "node.log")
    try:
        assert node.wait(timeout=30) == 2
    finally:
        stop_process(node)
    assert "error: TLS mismatch: the server at" in (tmp_path / "node.log").read_text()


def test_endpoint_parsing():
    assert Endpoint.parse("fl.example.org:9092") == Endpoint("fl.example.org", 9092)
    assert Endpoint.parse("[2001:db8::1]:9092") == Endpoint("2001:db8::1", 9092)
    assert str(Endpoint("2001:db8::1", 9092)) == "[2001:db8::1]:9092"
    assert Endpoint.parse("127.0.0.1:1").is_loopback and not Endpoint.parse("10.0.0.1:1").is_loopback
    for bad in ("fl.example.org", "fl.example.org:http", "2001:db8::1:9092", ":9092", "h:70000"):
        with pytest.raises(ValueError, match="--superlink"):
            Endpoint.parse(bad)


def test_supernode_command_connects_out_with_tls_key_and_node_config(tmp_path):
    key = create_node_keys("site-a", tmp_path / "keys").private_key
    data = tmp_path / "my data's \\ folder"
    data.mkdir()
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    settings = NodeSettings(Endpoint("fl.example.org", 9092), ca, key, data, "hn-openkbp", "site-a", 19094,
                            state_dir=tmp_path / "state")
    command = supernode_command(settings)
    assert command[0].endswith("flower-supernode")
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--superlink"] == "fl.example.org:9092"
    assert flags["--root-certificates"] == str(ca.resolve())
    assert flags["--auth-supernode-private-key"] == str(key.resolve())
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "19094"
    assert "--insecure" not in command
    from flwr.common.config import parse_config_args

    assert parse_config_args([node_config(settings)]) == {
        "data-path": str(data.resolve()), "protocol": "hn-openkbp", "site-name": "site-a",
        "worker-socket": str((tmp_path / "state" / "worker.sock").resolve())}
    check_node_settings(settings)


def test_node_settings_that_cannot_work_are_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    key = create_node_keys("site-a", tmp_path / "keys")
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(DeploymentError, match="not an unencrypted OpenSSH"):
        check_node_settings(NodeSettings(Endpoint("h", 1), ca, key.public_key, data))
    with pytest.raises(FileNotFoundError, match="dataset folder"):
        check_node_settings(NodeSettings(Endpoint("h", 1), ca, key.private_key, tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="CA certificate"):
        check_node_settings(NodeSettings(Endpoint("h", 1), tmp_path / "no.crt", key.private_key, data))
    with pytest.raises(ConfigError, match="--insecure is for this machine only"):
        check_node_settings(NodeSettings(Endpoint("10.0.0.1", 1), None, None, data, insecure=True))
