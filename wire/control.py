"""The one way fedrt reaches a server's Control API (node registry, run submission): HTTPS verified with the
federation's CA and authenticated with the operator's credential (the server's proxy passes Control API calls only
for it), or plain HTTP to a local test server started with ``--insecure``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protocols.errors import ConfigError, DataNotFoundError, DeploymentError
from wire.endpoint import Endpoint

if TYPE_CHECKING:
    import httpx
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.protobuf.client import ProtobufCall, ProtobufRequestContext

# The header the server's proxy adds to its 403 for a Control API call without a valid operator credential: why.
REFUSAL_HEADER = "X-Fedrt-Refused"
OPERATOR_FIX = ("issue one with `fedrt certs operator NAME --certs DIR --out DIR` where the federation's ca.key is, "
                "and pass it as --operator NAME.pem")


@dataclass(frozen=True)
class ControlAccess:
    """How an operator reaches a server's Control API: its address, the federation's CA, the operator's credential
    (``NAME.pem`` from ``fedrt certs operator``: key and client certificate), or ``insecure`` for a local test server.
    """

    endpoint: Endpoint
    ca: Path | None = None
    operator: Path | None = None
    insecure: bool = False
    local: bool = False  # the server's own access to its SuperLink on loopback, behind the proxy: no credential

    def tls_context(self) -> ssl.SSLContext:
        """The client side of the TLS connection: the server verified with the CA, the operator's certificate
        presented; an error naming the missing or unusable file and the fix.
        """
        if self.ca is None:
            raise ConfigError("give --ca CA.crt (the federation's ca.crt from `fedrt certs init`)")
        if not Path(self.ca).is_file():
            raise DataNotFoundError(f"CA certificate {self.ca} not found; give --ca with the ca.crt from `fedrt "
                                    "certs init`")
        if self.local:
            self.endpoint.require_loopback("the server's own Control API access")
            return ssl.create_default_context(cafile=str(Path(self.ca).resolve()))
        if self.operator is None:
            raise ConfigError(f"give --operator NAME.pem: the Control API of {self.endpoint} needs an operator "
                              f"credential; {OPERATOR_FIX}")
        if not Path(self.operator).is_file():
            raise DataNotFoundError(f"operator credential {self.operator} not found; {OPERATOR_FIX}")
        context = ssl.create_default_context(cafile=str(Path(self.ca).resolve()))
        try:
            context.load_cert_chain(str(Path(self.operator).resolve()))
        except (ssl.SSLError, ValueError) as exc:
            raise DeploymentError(f"{self.operator} is not an operator credential (a PEM file holding a key and its "
                                  f"certificate: {exc}); {OPERATOR_FIX}") from exc
        return context

    def client(self, timeout_s: float = 30.0) -> ControlHttpClient:
        """A Control API client; a refusal by the server's proxy raises a :class:`DeploymentError` that names why."""
        from flwr.supercore.control import ControlHttpClient

        if self.insecure:
            self.endpoint.require_loopback("--insecure")
            return ControlHttpClient(f"http://{self.endpoint}", timeout=timeout_s, verify=False)
        return ControlHttpClient(f"https://{self.endpoint}", timeout=timeout_s, verify=self.tls_context(),
                                 interceptors=[_ProxyRefusal(self)])


@dataclass(frozen=True)
class _ProxyRefusal:
    """Turns the proxy's 403 (no, or no valid, operator credential) into one line naming the cause and the fix."""

    access: ControlAccess

    def intercept(self, context: ProtobufRequestContext, call_next: ProtobufCall) -> httpx.Response:
        """Pass the call on; raise when the proxy refused it."""
        response = call_next(context)
        if response.status_code == 403 and REFUSAL_HEADER in response.headers:
            call = context.rpc_method.rsplit("/", 1)[-1]
            raise DeploymentError(f"{self.access.endpoint} refused the Control API call {call}: "
                                  f"{response.headers[REFUSAL_HEADER]} ({self.access.operator}); {OPERATOR_FIX}")
        return response
