"""Certificates and keys of a fedrt deployment: the federation's own CA, the aggregation server's TLS
certificate (names and addresses the hospitals dial, as SANs), operators' client certificates (the credential the
server's proxy requires for the Control API) and the node key pairs Flower's node authentication uses
(OpenSSH-format EC keys on a NIST curve). Private keys are written 0600, atomically, and nothing is overwritten
unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocols.errors import ConfigError, DataNotFoundError, DeploymentError, OutputError
from protocols.files import atomic_write

CA_DAYS = 3650  # the federation's root of trust: replaced rarely, every node must get the new one
SERVER_DAYS = 397  # the server certificate: renewed yearly with the same CA (no change at the hospitals)
OPERATOR_DAYS = 397  # an operator's credential: reissued yearly (and the CA replaced if one leaks: no revocation list)
# The organisational unit that marks an operator's client certificate: the proxy passes Control API calls only for
# a certificate from the federation's CA with this unit (and client-authentication usage).
OPERATOR_UNIT = "fedrt operator"
CURVE = ec.SECP384R1  # NIST P-384 for the CA, server, operators and nodes (Flower accepts NIST curves only)
# Names the SuperLink's own subprocesses dial: it runs its ServerApp runner against 127.0.0.1 when it binds
# to all interfaces, so these are always in the server certificate.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*")


@dataclass(frozen=True)
class ServerFiles:
    """The files ``certs init`` writes: the CA (certificate and key) and the server's certificate and key."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def under(cls, folder: Path | str) -> ServerFiles:
        """The standard file names in ``folder``."""
        folder = Path(folder)
        return cls(folder / "ca.crt", folder / "ca.key", folder / "server.crt", folder / "server.key")


@dataclass(frozen=True)
class NodeKeyFiles:
    """A node's key pair: the private key stays at the hospital, the public key goes to the server operator."""

    private_key: Path
    public_key: Path


def parse_hosts(hosts: Sequence[str], local_names: bool = True) -> list[x509.GeneralName]:
    """SAN entries for host names and IP addresses (IPs become IP SANs, names DNS SANs), plus the local names."""
    names: list[x509.GeneralName] = []
    for host in [*hosts, *(LOCAL_NAMES if local_names else ())]:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            if not _DNS_NAME.fullmatch(host):
                raise ConfigError(f"--host {host!r} is neither an IP address nor a DNS name; give the name or "
                                 "address the hospitals use to reach the server") from None
            entry = x509.DNSName(host.lower())
        if entry not in names:
            names.append(entry)
    return names


def _check_name(name: str, what: str) -> str:
    """``name`` when it is a safe file and certificate name; an error naming the allowed characters otherwise."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{what} name {name!r}: use letters, digits, '.', '_' or '-' (at most 64 characters), "
                          "e.g. site-a or alice")
    return name


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise OutputError(f"{', '.join(existing)} already exist(s); pass --force to replace "
                          "(replacing the CA means every hospital needs the new ca.crt)")


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_ca(federation: str, valid_from: dt.datetime | None = None,
            days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (may sign end-entity certificates only) and its key. Its name carries
    ``federation`` and the creation date, so that error messages can tell two fedrt CAs apart.
    """
    key = ec.generate_private_key(CURVE())
    start = valid_from or _utc_now() - dt.timedelta(minutes=5)
    common_name = f"fedrt CA {federation} {start:%Y-%m-%d %H:%M}"[:64]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrt")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA384()))
    return cert, key


def _end_entity(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject: x509.Name,
                usage: x509.ObjectIdentifier, start: dt.datetime | None, days: int,
                sans: list[x509.GeneralName] | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new key and its certificate for ``subject`` signed by the CA, for one extended key usage (TLS server or
    client), with ``sans`` when given.
    """
    key = ec.generate_private_key(CURVE())
    start = start or _utc_now() - dt.timedelta(minutes=5)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = (builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return cert, key


def make_server_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: Sequence[str],
                            valid_from: dt.datetime | None = None, days: int = SERVER_DAYS,
                            local_names: bool = True) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for ``hosts`` signed by the CA, and its key. ``local_names`` adds
    :data:`LOCAL_NAMES`, which the SuperLink itself needs; leave it on for a SuperLink.
    """
    if not hosts:
        raise ConfigError("give at least one --host: the DNS name or IP address the hospitals use for the server")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0].strip("[]")),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrt")])
    return _end_entity(ca_cert, ca_key, subject, ExtendedKeyUsageOID.SERVER_AUTH, valid_from, days,
                       parse_hosts(hosts, local_names))


def make_operator_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
                              valid_from: dt.datetime | None = None,
                              days: int = OPERATOR_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An operator's TLS client certificate (unit :data:`OPERATOR_UNIT`, client authentication only) and its key."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _check_name(name, "operator")),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OPERATOR_UNIT),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrt")])
    return _end_entity(ca_cert, ca_key, subject, ExtendedKeyUsageOID.CLIENT_AUTH, valid_from, days)


def write_server_certificate(folder: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                             hosts: Sequence[str], force: bool = False, valid_from: dt.datetime | None = None,
                             days: int = SERVER_DAYS) -> ServerFiles:
    """Issue a server certificate with the CA and write ``server.crt``/``server.key`` into ``folder``."""
    files = ServerFiles.under(folder)
    _refuse_overwrite([files.server_cert, files.server_key], force)
    cert, key = make_server_certificate(ca_cert, ca_key, hosts, valid_from, days)
    atomic_write(files.server_key, _private_pem(key), 0o600)
    atomic_write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def init_certificates(folder: Path | str, hosts: Sequence[str], force: bool = False,
                      valid_from: dt.datetime | None = None, ca_days: int = CA_DAYS,
                      server_days: int = SERVER_DAYS) -> ServerFiles:
    """Create the federation CA and the server certificate for ``hosts`` in ``folder`` (``certs init``)."""
    folder = Path(folder)
    files = ServerFiles.under(folder)
    _refuse_overwrite([files.ca_cert, files.ca_key, files.server_cert, files.server_key], force)
    if not hosts:
        raise ConfigError("give at least one --host: the DNS name or IP address the hospitals use for the server")
    parse_hosts(hosts)
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(hosts[0].strip("[]"), valid_from=valid_from, days=ca_days)
    atomic_write(files.ca_key, _private_pem(ca_key), 0o600)
    atomic_write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    write_server_certificate(folder, ca_cert, ca_key, hosts, force=True, valid_from=valid_from, days=server_days)
    return files


def load_ca(folder: Path | str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in ``folder``; an error naming the file and the fix when missing."""
    files = ServerFiles.under(folder)
    for path in (files.ca_cert, files.ca_key):
        if not path.is_file():
            raise DataNotFoundError(f"{path} not found; create the CA first with `fedrt certs init --out {folder} "
                                    "--host NAME`")
    cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise DeploymentError(f"{files.ca_key} is not the key of {files.ca_cert}; restore the matching pair")
    return cert, key


def renew_server_certificate(folder: Path | str, hosts: Sequence[str], days: int = SERVER_DAYS) -> ServerFiles:
    """Replace the server certificate with a new one from the same CA (rotation; hospitals change nothing)."""
    ca_cert, ca_key = load_ca(folder)
    return write_server_certificate(Path(folder), ca_cert, ca_key, hosts, force=True, days=days)


def create_node_keys(name: str, folder: Path | str, force: bool = False) -> NodeKeyFiles:
    """A node key pair as ``folder/NAME.key`` (OpenSSH EC private key, 0600) and ``folder/NAME.pub``."""
    _check_name(name, "node")
    folder = Path(folder)
    files = NodeKeyFiles(folder / f"{name}.key", folder / f"{name}.pub")
    _refuse_overwrite([files.private_key, files.public_key], force)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write(files.private_key, private, 0o600)
    atomic_write(files.public_key, public + f" fedrt-{name}\n".encode(), 0o644)
    return files


def issue_operator_credential(certs: Path | str, name: str, folder: Path | str, force: bool = False,
                              days: int = OPERATOR_DAYS, valid_from: dt.datetime | None = None) -> Path:
    """An operator's Control API credential ``folder/NAME.pem``: the key and the client certificate the federation's
    CA (in ``certs``) signs for it, in one file, 0600.
    """
    path = Path(folder) / f"{_check_name(name, 'operator')}.pem"
    _refuse_overwrite([path], force)
    ca_cert, ca_key = load_ca(certs)
    cert, key = make_operator_certificate(ca_cert, ca_key, name, valid_from, days)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, _private_pem(key) + cert.public_bytes(serialization.Encoding.PEM), 0o600)
    return path


def verify_server_files(folder: Path | str, now: dt.datetime | None = None) -> x509.Certificate:
    """Check what ``server start`` needs in ``folder``: the files exist, the key matches the certificate, the CA
    issued it and it is valid now. Returns the server certificate; errors name the file and the fix.
    """
    files = ServerFiles.under(folder)
    for path in (files.ca_cert, files.server_cert, files.server_key):
        if not path.is_file():
            raise DataNotFoundError(f"{path} not found; create the certificates with `fedrt certs init --out {folder} "
                                    "--host NAME_OR_IP`")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    if key.public_key() != cert.public_key():
        raise DeploymentError(f"{files.server_key} is not the key of {files.server_cert}; reissue both with "
                         f"`fedrt certs renew --out {folder} --host NAME_OR_IP`")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise DeploymentError(f"{files.server_cert} was not issued by {files.ca_cert}; reissue it with "
                         f"`fedrt certs renew --out {folder} --host NAME_OR_IP`") from exc
    now = now or dt.datetime.now(dt.UTC)
    for path, c in ((files.ca_cert, ca), (files.server_cert, cert)):
        if now < c.not_valid_before_utc:
            raise DeploymentError(f"{path} is valid only from {c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this "
                             "machine's clock (NTP)")
        if now > c.not_valid_after_utc:
            fix = (f"`fedrt certs renew --out {folder} --host NAME_OR_IP`" if c is cert else
                   f"a new CA: `fedrt certs init --out {folder} --host NAME_OR_IP --force`, then give every hospital "
                   "the new ca.crt")
            raise DeploymentError(f"{path} expired on {c.not_valid_after_utc:%Y-%m-%d} UTC; replace it with {fix}")
    return cert
