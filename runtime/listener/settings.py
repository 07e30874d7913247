"""What a DICOM node is told: its own AE title and port, who may call it, when a study is complete, where results go.

Built from the ``listen:`` section of the Hydra config (``configs/config.yaml``); every setting the node cannot use
is a :class:`~protocols.errors.ConfigError` naming the ``listen.*`` key and the fix, raised before the node starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.errors import ConfigError

AE_TITLE_MAX_CHARS = 16  # DICOM AE titles are at most 16 characters (PS3.5, VR AE)


def check_ae_title(value: Any, key: str) -> str:
    """A usable AE title: 1-16 printable ASCII characters, no backslash, not only spaces."""
    title = str(value or "").strip()
    if not title or len(title) > AE_TITLE_MAX_CHARS or "\\" in title or not title.isascii() \
            or not title.isprintable():
        raise ConfigError(f"{key}={value!r} is not a DICOM AE title; give 1 to {AE_TITLE_MAX_CHARS} ASCII characters "
                          "without a backslash, e.g. listen.ae_title=FEDRT")
    return title


def check_port(value: Any, key: str, allow_zero: bool = False) -> int:
    """A TCP port number (0 only where the system may choose one)."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(f"{key}={value!r} is not a TCP port; give a number from 1 to 65535")
    return port


def positive(value: Any, key: str, integer: bool = False) -> float:
    """A positive number (seconds, attempts)."""
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive {'whole ' if integer else ''}number")
    return number


@dataclass(frozen=True)
class Destination:
    """The DICOM node (PACS, treatment planning system) the results are sent to."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Retry:
    """How a result that cannot be sent is retried.

    Args:
        attempts: C-STORE attempts in one round; between them the sender waits ``interval_s``.
        interval_s: seconds between two attempts of a round.
        resend_after_s: after a failed round, seconds until the next round (the result stays on disk meanwhile,
            and is sent again at every start of the node).
    """

    attempts: int
    interval_s: float
    resend_after_s: float


@dataclass(frozen=True)
class PlanSettings:
    """The plan a study with targets gets: beams and optimisation effort (``fedrt plan``'s defaults)."""

    beams: int
    iterations: int


@dataclass(frozen=True)
class ListenerSettings:
    """Everything ``fedrt listen`` needs, checked.

    Args:
        ae_title: the node's own AE title (callers must address it by this title).
        host: the address the node listens on (127.0.0.1 = this machine only).
        port: the TCP port it listens on (0 = a free port chosen by the system, for tests).
        allowed_callers: the calling AE titles that may associate; any other is refused (and logged).
        quiet_s: a study is complete when no instance of it arrived for this many seconds.
        store: the folder that keeps inputs and results until sent, and the audit log.
        destination: where results are sent.
        retry: how failed sends are retried.
        seg_model: the segmentation model (checkpoint or ``models:/NAME@ALIAS``).
        dose_model: the dose model for studies with targets; None = segment every study.
        protocol: the protocol name or YAML path the studies are planned for.
        plan: beams and iterations of a plan.
    """

    ae_title: str
    host: str
    port: int
    allowed_callers: tuple[str, ...]
    quiet_s: float
    store: Path
    destination: Destination
    retry: Retry
    seg_model: str
    dose_model: str | None
    protocol: str
    plan: PlanSettings

    @property
    def audit_log(self) -> Path:
        """The audit log: one JSON object per line, appended, in the store folder."""
        return self.store / "audit.jsonl"

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any], protocol: str) -> ListenerSettings:
        """Settings from the config's ``listen:`` section (a plain mapping); ``protocol`` is the config's."""
        callers = section.get("allowed_callers") or []
        if isinstance(callers, str):
            callers = [callers]
        if not callers:
            raise ConfigError("listen.allowed_callers is empty, so the node would accept no caller (it never listens "
                              "open to all); list the AE titles allowed to send, e.g. "
                              "'listen.allowed_callers=[CT_SIM,TPS1]'")
        dest = section.get("destination") or {}
        if not dest.get("ae_title") or not dest.get("host") or not dest.get("port"):
            raise ConfigError("listen.destination needs ae_title, host and port (where results are sent), e.g. "
                              "listen.destination.ae_title=PACS listen.destination.host=10.0.0.5 "
                              "listen.destination.port=104")
        retry = section.get("retry") or {}
        plan = section.get("plan") or {}
        if not section.get("seg_model"):
            raise ConfigError("listen.seg_model is empty; give a checkpoint or models:/NAME@ALIAS")
        if not section.get("store"):
            raise ConfigError("listen.store is empty; give the folder that keeps studies until their results are sent")
        return cls(
            ae_title=check_ae_title(section.get("ae_title"), "listen.ae_title"),
            host=str(section.get("host") or "127.0.0.1"),
            port=check_port(section.get("port"), "listen.port", allow_zero=True),
            allowed_callers=tuple(check_ae_title(c, "listen.allowed_callers") for c in callers),
            quiet_s=positive(section.get("quiet_s"), "listen.quiet_s"),
            store=Path(section["store"]),
            destination=Destination(check_ae_title(dest["ae_title"], "listen.destination.ae_title"), str(dest["host"]),
                                    check_port(dest["port"], "listen.destination.port")),
            retry=Retry(int(positive(retry.get("attempts"), "listen.retry.attempts", integer=True)),
                        positive(retry.get("interval_s"), "listen.retry.interval_s"),
                        positive(retry.get("resend_after_s"), "listen.retry.resend_after_s")),
            seg_model=str(section["seg_model"]),
            dose_model=str(section["dose_model"]) if section.get("dose_model") else None,
            protocol=protocol,
            plan=PlanSettings(int(positive(plan.get("beams"), "listen.plan.beams", integer=True)),
                              int(positive(plan.get("iterations"), "listen.plan.iterations", integer=True))),
        )
