"""A treatment protocol as data: structures, prescriptions, the grid and the clinical goals."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from protocols.errors import ConfigError, DataNotFoundError

DEFINITIONS = "definitions"
METRIC_PATTERN = re.compile(r"^(Dmean|D(?P<cc>\d+(\.\d+)?)cc|D(?P<pct>\d+(\.\d+)?))$")


@dataclass(frozen=True)
class Structure:
    """A named region of interest; targets carry their prescription, lateral OARs their mirror twin."""

    name: str
    kind: str
    prescription_gy: float | None = None
    mirror: str | None = None

    @property
    def is_target(self) -> bool:
        return self.kind == "target"


@dataclass(frozen=True)
class ClinicalGoal:
    """One dose-volume goal, e.g. SpinalCord D0.1cc <= 45 Gy or PTV70 D95 >= 0.95 x Rx."""

    structure: str
    metric: str
    op: str
    limit_gy: float | None = None
    limit_rx: float | None = None

    def __post_init__(self) -> None:
        if not METRIC_PATTERN.match(self.metric):
            raise ConfigError(f"goal {self}: metric must be Dmean, D<x>cc or D<p>, got {self.metric!r}")
        if self.op not in ("<=", ">="):
            raise ConfigError(f"goal {self}: op must be '<=' or '>=', got {self.op!r}")
        if (self.limit_gy is None) == (self.limit_rx is None):
            raise ConfigError(f"goal {self}: give exactly one of limit_gy and limit_rx")

    @property
    def label(self) -> str:
        limit = f"{self.limit_gy:g} Gy" if self.limit_gy is not None else f"{self.limit_rx:g} x Rx"
        return f"{self.structure} {self.metric} {self.op} {limit}"


@dataclass(frozen=True)
class Grid:
    """The voxel grid cases of this protocol live on (axis order rows, columns, slices)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Protocol:
    """A treatment protocol: the contract between a hospital's dataset and the models trained on it."""

    name: str
    description: str
    fractions: int
    grid: Grid
    structures: tuple[Structure, ...]
    goals: tuple[ClinicalGoal, ...]

    @property
    def oars(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures if not s.is_target)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures if s.is_target)

    @property
    def structure_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures)

    @property
    def prescriptions_gy(self) -> dict[str, float]:
        return {s.name: float(s.prescription_gy) for s in self.structures if s.is_target}

    @property
    def max_prescription_gy(self) -> float:
        return max(self.prescriptions_gy.values())

    @property
    def mirror_pairs(self) -> dict[str, str]:
        """Left/right twins that swap names when an image is flipped left-right."""
        return {s.name: s.mirror for s in self.structures if s.mirror}

    def with_prescription(self, doses_gy: dict[str, float], fractions: int) -> Protocol:
        """The protocol with a patient's own target doses and fraction count (goals relative to Rx follow)."""
        unknown = sorted(set(doses_gy) - set(self.targets))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not a target of protocol {self.name} "
                              f"({', '.join(self.targets)})")
        structures = tuple(dataclasses.replace(s, prescription_gy=float(doses_gy[s.name])) if s.name in doses_gy
                           else s for s in self.structures)
        return dataclasses.replace(self, structures=structures, fractions=int(fractions))

    def structure(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"protocol {self.name} has no structure {name!r}; known: {', '.join(self.structure_names)}")


def available_protocols() -> list[str]:
    """Names of the protocols shipped with fedrt."""
    folder = resources.files(__package__) / DEFINITIONS
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """Load a shipped protocol by name (e.g. ``hn-openkbp``) or a protocol YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DataNotFoundError(f"protocol file {path} does not exist; give the path of a protocol .yaml file "
                                    f"or a shipped protocol name ({', '.join(available_protocols())})")
        text = path.read_text()
    else:
        resource = resources.files(__package__) / DEFINITIONS / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown protocol {name_or_path!r}; shipped protocols: {', '.join(available_protocols())}, "
                "or give the path of a protocol .yaml file"
            )
        text = resource.read_text()
    return protocol_from_dict(yaml.safe_load(text), source=str(name_or_path))


def protocol_from_dict(data: dict, source: str = "<dict>") -> Protocol:
    """Build and check a protocol from its YAML mapping; errors name the source and the field."""
    try:
        structures = tuple(Structure(**s) for s in data["structures"])
        grid = Grid(tuple(data["grid"]["shape"]), tuple(float(v) for v in data["grid"]["spacing_mm"]))
        goals = tuple(ClinicalGoal(**g) for g in data.get("goals", []))
        protocol = Protocol(
            name=data["name"],
            description=data.get("description", ""),
            fractions=int(data["fractions"]),
            grid=grid,
            structures=structures,
            goals=goals,
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"protocol {source}: missing or malformed field {exc}") from exc
    names = set(protocol.structure_names)
    for s in structures:
        if s.kind not in ("oar", "target"):
            raise ConfigError(f"protocol {source}: structure {s.name} kind must be 'oar' or 'target'")
        if s.is_target and s.prescription_gy is None:
            raise ConfigError(f"protocol {source}: target {s.name} needs prescription_gy")
        if s.mirror and s.mirror not in names:
            raise ConfigError(f"protocol {source}: {s.name} mirrors unknown structure {s.mirror}")
    for g in goals:
        if g.structure not in names:
            raise ConfigError(f"protocol {source}: goal {g.label} names unknown structure {g.structure}")
        if g.limit_rx is not None and not protocol.structure(g.structure).is_target:
            raise ConfigError(f"protocol {source}: goal {g.label} is relative to Rx but {g.structure} is an OAR")
    return protocol


def protocol_to_dict(protocol: Protocol) -> dict:
    """The protocol as the mapping :func:`protocol_from_dict` reads (stored in checkpoints and sent to sites)."""
    data = dataclasses.asdict(protocol)
    data["grid"] = {"shape": list(protocol.grid.shape), "spacing_mm": list(protocol.grid.spacing_mm)}
    return data


def protocol_digest(protocol: Protocol) -> str:
    """A digest of the protocol's whole content: two protocols of the same name but other structures differ."""
    return hashlib.sha256(json.dumps(protocol_to_dict(protocol), sort_keys=True).encode()).hexdigest()[:16]
