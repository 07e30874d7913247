"""Why a connection to the SuperLink fails, as both sides diagnose it: the network path (name, route, firewall),
the TLS handshake against the federation's CA, and one summary for an error message. ``fedrt node check`` shows
each check; the server's commands and ``fedrt run`` use ``connection_failure`` when a call fails.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from wire.endpoint import Endpoint
from wire.identity import certificate_names

# OpenSSL verification codes (X509_V_ERR_*) grouped by what the hospital has to do about them.
_UNKNOWN_ISSUER = {2, 7, 18, 19, 20, 21, 30}
_NOT_YET_VALID, _EXPIRED = 9, 10
_NAME_MISMATCH = {62, 64}


@dataclass(frozen=True)
class Check:
    """One preflight result: ``status`` is ok, warn, fail or skip; ``cause`` a stable code; ``message`` the
    explanation with the fix.
    """

    name: str
    status: str
    cause: str
    message: str

    @property
    def failed(self) -> bool:
        """Whether the node cannot join because of this."""
        return self.status == "fail"


def check_network(endpoint: Endpoint, timeout_s: float = 10.0) -> Check:
    """Whether a TCP connection to the SuperLink opens (name resolution, routing, firewall, server up)."""
    try:
        socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Check("network", "fail", "unreachable",
                     f"unreachable host: cannot resolve the name {endpoint.host!r} ({exc.strerror}): check the "
                     "spelling in --superlink and this machine's DNS, or use the server's IP address if its "
                     "certificate has it")
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return Check("network", "fail", "unreachable",
                     f"unreachable host: {endpoint} refused the connection (nothing listens on port {endpoint.port}): "
                     "check that the SuperLink runs (`fedrt server start`) and that the port is right")
    except TimeoutError:
        return Check("network", "fail", "unreachable",
                     f"unreachable host: no answer from {endpoint} within {timeout_s:.0f} s: a firewall probably drops "
                     f"the traffic; ask IT to allow OUTBOUND TCP to {endpoint} (no inbound port is needed)")
    except OSError as exc:
        return Check("network", "fail", "unreachable",
                     f"unreachable host: cannot connect to {endpoint} ({exc.strerror or exc}): check the network route "
                     f"and that outbound TCP to port {endpoint.port} is allowed")
    return Check("network", "ok", "ok", f"TCP connection to {endpoint} opens")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_ca_file(ca: Path) -> Check | None:
    """Problems with the CA file itself (missing, not a certificate, not a CA, outside its validity). A bundle
    (old and new CA during a CA rotation) is fine when one of its CAs is valid now.
    """
    if not ca.is_file():
        return Check("tls", "fail", "ca-file", f"CA certificate {ca} not found; give --ca with the federation's "
                     "ca.crt from the server operator")
    try:
        certs = x509.load_pem_x509_certificates(ca.read_bytes())
    except ValueError:
        return Check("tls", "fail", "ca-file", f"{ca} is not a PEM certificate; give --ca with the federation's "
                     "ca.crt (not the server's key or the node key)")
    cas = [c for c in certs if _is_ca(c)]
    if not cas:
        return Check("tls", "fail", "wrong-ca", f"wrong CA: {ca} is not a CA certificate (it is for "
                     f"{_common_name(certs[0].subject)}); give --ca with the federation's ca.crt")
    now = _utc_now()
    if any(c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in cas):
        return None
    cert = cas[0]
    if now > cert.not_valid_after_utc:
        return Check("tls", "fail", "expired", f"expired certificate: the CA in {ca} expired on "
                     f"{cert.not_valid_after_utc:%Y-%m-%d}; get the federation's current ca.crt from the operator")
    return Check("tls", "fail", "not-yet-valid", f"not-yet-valid certificate: the CA in {ca} is valid only from "
                 f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; this machine's clock is probably wrong (NTP)")


def _peer_certificate(endpoint: Endpoint, timeout_s: float) -> x509.Certificate | None:
    """The server's certificate without verifying it, to explain why verification failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s) as sock, \
                context.wrap_socket(sock, server_hostname=endpoint.host) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else name.rfc4514_string()


def _names(cert: x509.Certificate | None) -> str:
    return ", ".join(certificate_names(cert)) if cert is not None else "unknown names"


def _verification_failure(exc: ssl.SSLCertVerificationError, endpoint: Endpoint, ca: Path,
                          timeout_s: float) -> Check:
    peer = _peer_certificate(endpoint, timeout_s)
    now = _utc_now()
    code = exc.verify_code
    if code in _NAME_MISMATCH:
        kind = "IP address" if endpoint.is_ip else "host name"
        return Check("tls", "fail", "host-mismatch",
                     f"host name mismatch: the server's certificate is for {_names(peer)}, not the {kind} "
                     f"{endpoint.host}: connect with one of those names (--superlink NAME:{endpoint.port}) or ask the "
                     f"operator to reissue it with `fedrt certs renew --host {endpoint.host} ...`")
    if code == _EXPIRED or (peer is not None and now > peer.not_valid_after_utc):
        until = f" on {peer.not_valid_after_utc:%Y-%m-%d %H:%M} UTC" if peer is not None else ""
        return Check("tls", "fail", "expired",
                     f"expired certificate: the server's certificate expired{until}; the operator renews it with "
                     "`fedrt certs renew --out DIR --host ...` and restarts the server (hospitals change nothing)")
    if code == _NOT_YET_VALID or (peer is not None and now < peer.not_valid_before_utc):
        since = f" from {peer.not_valid_before_utc:%Y-%m-%d %H:%M} UTC" if peer is not None else " later"
        return Check("tls", "fail", "not-yet-valid",
                     f"not-yet-valid certificate: the server's certificate is valid only{since} (now "
                     f"{now:%Y-%m-%d %H:%M} UTC): the clock of this machine or of the server is wrong; sync both (NTP)")
    if code in _UNKNOWN_ISSUER:
        issuer = _common_name(peer.issuer) if peer is not None else "an unknown issuer"
        mine = " + ".join(repr(_common_name(c.subject)) for c in x509.load_pem_x509_certificates(ca.read_bytes()))
        return Check("tls", "fail", "wrong-ca",
                     f"wrong CA: the server's certificate was issued by {issuer!r}, but {ca} holds {mine}: use the "
                     "federation's ca.crt from the operator (the one `fedrt certs init` wrote for this server)")
    return Check("tls", "fail", "tls", f"the server's certificate failed verification ({exc.verify_message}); "
                 "ask the operator to check the server's certificates (`fedrt certs init`)")


def check_tls(endpoint: Endpoint, ca: Path, timeout_s: float = 10.0) -> Check:
    """A real TLS handshake with the name in ``--superlink``, verified against the CA file only."""
    if (problem := _check_ca_file(ca)) is not None:
        return problem
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s) as sock, \
                context.wrap_socket(sock, server_hostname=endpoint.host) as tls:
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        return _verification_failure(exc, endpoint, ca, timeout_s)
    except ssl.SSLError as exc:
        return Check("tls", "fail", "not-tls",
                     f"{endpoint} does not speak TLS ({exc.reason}): is it a SuperLink started with `fedrt server "
                     "start --certs DIR` (not --insecure), and is the port right?")
    except TimeoutError:
        return Check("tls", "fail", "not-tls", f"{endpoint} accepted the connection but sent no TLS answer within "
                     f"{timeout_s:.0f} s: a proxy or another service may hold that port")
    except OSError as exc:
        network = check_network(endpoint, timeout_s)
        return network if network.failed else Check("tls", "fail", "tls", f"the TLS connection to {endpoint} "
                                                    f"failed ({exc}); see the server's log")
    days_left = (peer.not_valid_after_utc - _utc_now()).days
    status = "warn" if days_left < 30 else "ok"
    return Check("tls", status, "ok", f"{version} to {endpoint}: certificate for {_names(peer)}, valid "
                 f"{days_left} more days" + (" (ask the operator to renew it soon)" if days_left < 30 else ""))


def check_plaintext(endpoint: Endpoint, timeout_s: float = 10.0) -> Check:
    """For ``--insecure``: a server that speaks TLS would never answer the node's plain requests (it would retry
    forever). A server that does not answer at all is the network check's to report.
    """
    peer = _peer_certificate(endpoint, timeout_s)
    if peer is not None:
        return Check("tls", "fail", "speaks-tls",
                     f"TLS mismatch: the server at {endpoint} speaks TLS (certificate for {_names(peer)}), but "
                     "--insecure talks to it without TLS and the node would retry forever: drop --insecure and give "
                     "--ca ca.crt (the federation's, from the operator) and --key NODE.key")
    return Check("tls", "warn", "insecure", f"--insecure: {endpoint} does not speak TLS (a server started with "
                 "--insecure); TLS and node authentication are off: local testing only")


def connection_failure(endpoint: Endpoint, ca: Path | None, insecure: bool, exc: Exception) -> str:
    """Why a connection to the SuperLink failed, diagnosed with the network and TLS checks."""
    checks = [check_network(endpoint)]
    if not checks[0].failed and not insecure and ca is not None:
        checks.append(check_tls(endpoint, Path(ca)))
    failed = [c for c in checks if c.failed]
    return failed[0].message if failed else f"the connection to {endpoint} failed: {exc}"
