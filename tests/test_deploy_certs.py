"""Certificates and node keys: SANs, key formats Flower accepts, permissions, no silent overwrite, rotation."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrt.commands import certs as certs_command
from protocols.errors import ConfigError, DataNotFoundError, DeploymentError, OutputError
from server.certs import (
    OPERATOR_UNIT,
    ServerFiles,
    create_node_keys,
    init_certificates,
    issue_operator_credential,
    renew_server_certificate,
    verify_server_files,
)
from server.nodes import load_node_public_key
from wire.identity import certificate_names, key_fingerprint, load_node_private_key


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    certs_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.run(args)


def test_server_certificate_has_dns_and_ip_sans_and_is_signed_by_the_ca(tmp_path):
    files = init_certificates(tmp_path / "certs", ["fl.Example.org", "10.1.2.3", "2001:db8::7"])
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in
                                                        ("10.1.2.3", "2001:db8::7", "127.0.0.1", "::1")]
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp384r1"
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 360 <= days <= 400
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3000
    assert verify_server_files(tmp_path / "certs").serial_number == cert.serial_number


def test_private_keys_are_owner_only_and_no_temporary_files_are_left(tmp_path):
    files = init_certificates(tmp_path / "certs", ["fl.example.org"])
    node = create_node_keys("site-a", tmp_path / "keys")
    assert _mode(files.ca_key) == _mode(files.server_key) == _mode(node.private_key) == 0o600
    assert _mode(files.ca_cert) == _mode(files.server_cert) == _mode(node.public_key) == 0o644
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "ca.key", "server.crt", "server.key"]
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["site-a.key", "site-a.pub"]


def test_node_keys_are_openssh_ec_keys_on_a_nist_curve_that_flower_accepts(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    files = create_node_keys("site-a", tmp_path)
    assert files.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    private = serialization.load_ssh_private_key(files.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(files.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert public == private.public_key()
    assert files.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    # the bytes `flwr supernode register` sends are those the SuperNode authenticates with
    assert try_load_public_key(files.public_key) == public_key_to_bytes(private.public_key())
    assert load_node_public_key(files.public_key) == load_node_private_key(files.private_key).public_key()
    assert key_fingerprint(public).startswith("SHA256:") and len(key_fingerprint(public)) == 50


def test_existing_files_are_not_overwritten_without_force(tmp_path):
    files = init_certificates(tmp_path, ["fl.example.org"])
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match="--force"):
        init_certificates(tmp_path, ["other.example.org"])
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
    node = create_node_keys("site-a", tmp_path / "keys")
    key = node.private_key.read_bytes()
    with pytest.raises(OutputError, match=r"site-a\.key"):
        create_node_keys("site-a", tmp_path / "keys")
    assert node.private_key.read_bytes() == key
    init_certificates(tmp_path, ["other.example.org"], force=True)
    assert files.ca_cert.read_bytes() != before[files.ca_cert]
    assert create_node_keys("site-a", tmp_path / "keys", force=True).private_key.read_bytes() != key


def test_renewal_keeps_the_ca_and_issues_a_new_server_certificate(tmp_path):
    files = init_certificates(tmp_path, ["fl.example.org"])
    ca, old = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    renew_server_certificate(tmp_path, ["fl.example.org", "fl2.example.org"])
    assert files.ca_cert.read_bytes() == ca and files.server_cert.read_bytes() != old
    cert = verify_server_files(tmp_path)
    assert "fl2.example.org" in certificate_names(cert)


def test_server_files_that_cannot_work_are_refused_with_the_fix(tmp_path):
    files = init_certificates(tmp_path / "a", ["fl.example.org"])
    other = init_certificates(tmp_path / "b", ["fl.example.org"])
    files.server_key.write_bytes(other.server_key.read_bytes())
    with pytest.raises(DeploymentError, match=r"is not the key of .*certs renew"):
        verify_server_files(tmp_path / "a")
    files.server_cert.write_bytes(other.server_cert.read_bytes())
    with pytest.raises(DeploymentError, match="was not issued by"):
        verify_server_files(tmp_path / "a")
    old = init_certificates(tmp_path / "c", ["fl.example.org"],
                            valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=500), server_days=30)
    with pytest.raises(DeploymentError, match=r"server\.crt expired on .*certs renew"):
        verify_server_files(old.ca_cert.parent)
    with pytest.raises(DataNotFoundError, match="certs init"):
        verify_server_files(tmp_path / "missing")


@pytest.mark.parametrize("host", ["not a host", "exa_mple.org", "-bad.org", ""])
def test_hosts_that_are_neither_names_nor_addresses_are_refused(tmp_path, host):
    with pytest.raises(ConfigError, match="--host"):
        init_certificates(tmp_path, [host] if host else [])
    assert not ServerFiles.under(tmp_path).ca_cert.exists()


def test_certs_command_creates_files_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "certs"
    assert _cli(["certs", "init", "--out", str(out), "--host", "fl.example.org", "192.0.2.10"]) == 0
    assert "192.0.2.10" in certificate_names(verify_server_files(out))
    with pytest.raises(OutputError, match="already exist"):
        _cli(["certs", "init", "--out", str(out), "--host", "fl.example.org"])
    assert _cli(["certs", "node", "site-b", "--out", str(tmp_path / "keys")]) == 0
    printed = capsys.readouterr().out
    assert "site-b.pub" in printed and "SHA256:" in printed
    with pytest.raises(ConfigError, match="node name"):
        _cli(["certs", "node", "../escape", "--out", str(tmp_path / "keys")])


def test_an_operator_credential_is_one_private_file_a_client_certificate_from_the_ca_marked_as_an_operators(tmp_path,
                                                                                                            capsys):
    files = init_certificates(tmp_path / "certs", ["fl.example.org"])
    assert _cli(["certs", "operator", "alice", "--certs", str(tmp_path / "certs"), "--out", str(tmp_path / "op")]) == 0
    path = tmp_path / "op" / "alice.pem"
    assert f"--operator {path}" in capsys.readouterr().out
    assert _mode(path) == 0o600
    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    key = serialization.load_pem_private_key(data, password=None)
    assert key.public_key() == cert.public_key()
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca_cert.read_bytes()))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == OPERATOR_UNIT
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # it cannot serve as a server certificate
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(OutputError, match="--force"):
        issue_operator_credential(tmp_path / "certs", "alice", tmp_path / "op")
    with pytest.raises(ConfigError, match="operator name"):
        issue_operator_credential(tmp_path / "certs", "../bob", tmp_path / "op")
    with pytest.raises(DataNotFoundError, match="certs init"):
        issue_operator_credential(tmp_path / "no-ca", "bob", tmp_path / "op")
