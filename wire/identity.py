"""Who is who in a deployment, as both sides read it: a node's private key (the OpenSSH EC key Flower's node
authentication signs with), a key's fingerprint, and the names a TLS certificate is valid for.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.errors import DataNotFoundError, DeploymentError


def load_node_private_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """A node's private key as Flower's SuperNode reads it; an error naming the file and the fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"node key {path} not found; create one with `fedrt certs node NAME --out DIR`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise DeploymentError(f"{path} is not an unencrypted OpenSSH-format private key ({exc}); create the node key "
                              "with `fedrt certs node NAME --out DIR` and pass DIR/NAME.key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeploymentError(f"{path} is a {type(key).__name__}, but Flower's node authentication needs an EC key "
                              "on a NIST curve; create one with `fedrt certs node NAME --out DIR`")
    return key


def key_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:...`` of the OpenSSH key, as ``ssh-keygen -lf NAME.pub`` prints it (to compare keys by eye)."""
    blob = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (its SANs)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]
