"""The address of a SuperLink as the operator writes it (``HOST:PORT``, ``[IPv6]:PORT``), parsed once."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from protocols.errors import ConfigError


@dataclass(frozen=True)
class Endpoint:
    """A host (DNS name or IP address) and a TCP port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``HOST:PORT`` or ``[IPv6]:PORT``; an error naming the expected form otherwise."""
        text = text.strip()
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not host or (":" in host and not text.startswith("[")):
            raise ConfigError(f"--superlink {text!r}: expected HOST:PORT, e.g. fl.example.org:9092 or "
                             "[2001:db8::1]:9092")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--superlink {text!r}: the port must be a number between 1 and 65535")
        return cls(host, int(port))

    @property
    def is_ip(self) -> bool:
        """Whether the host is an IP address (checked against IP SANs) rather than a DNS name."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def is_loopback(self) -> bool:
        """Whether the host is this machine only (127.0.0.0/8, ::1 or localhost)."""
        if self.host == "localhost":
            return True
        return self.is_ip and ipaddress.ip_address(self.host).is_loopback

    def require_loopback(self, what: str) -> None:
        """Refuse ``what`` (an insecure mode: no TLS, no node authentication) for anything but this machine."""
        if not self.is_loopback:
            raise ConfigError(f"{what} is for this machine only (127.0.0.1, ::1 or localhost), not {self.host}: "
                              "without TLS and node authentication the traffic could be read and anyone could join")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
