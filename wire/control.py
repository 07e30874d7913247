"""The one way fedrt reaches a SuperLink's Control API (node registry, run submission): HTTPS verified with the
federation's CA, or plain HTTP to a local test server started with ``--insecure``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from flwr.supercore.control import ControlHttpClient

from protocols.errors import DataNotFoundError
from wire.endpoint import Endpoint


def control_client(endpoint: Endpoint, ca: Path | None, insecure: bool = False,
                   timeout_s: float = 30.0) -> ControlHttpClient:
    """A Control API client for ``endpoint``; without ``insecure`` the CA file must exist (an error says so)."""
    if insecure:
        endpoint.require_loopback("--insecure")
        return ControlHttpClient(f"http://{endpoint}", timeout=timeout_s, verify=False)
    if ca is None or not Path(ca).is_file():
        raise DataNotFoundError(f"CA certificate {ca} not found; give --ca with the ca.crt from `fedrt certs init`")
    return ControlHttpClient(f"https://{endpoint}", timeout=timeout_s,
                             verify=ssl.create_default_context(cafile=str(Path(ca).resolve())))
