"""Structure names: map the ROI names a clinic uses to the protocol's canonical names, and report the match.

One table (TG-263 names and common synonyms, laterality written before or after, any separators) plus an
optional per-site override file. Matching is exact after normalising (lower case, separators dropped):
derived structures such as ``SpinalCord_PRV5`` or ``PTV70_eval`` never match by accident, and whatever is
left unmatched is reported so the site can add an override.

Override file (YAML): canonical name -> the local ROI names that mean it, e.g.::

    SpinalCord: [Myelon, "Cord 2"]
    LeftParotid: Parotis li
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from protocols.protocol import Protocol

# Canonical (protocol) name -> synonyms, TG-263 name first. Lateral structures list the base organ names
# under LATERAL instead: every side spelling is generated before and after them.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "Brainstem": ("Brainstem", "Brain_Stem", "BrainStem", "Brain Stem"),
    "SpinalCord": ("SpinalCord", "Spinal_Cord", "Spinal Cord", "Cord", "SC", "Myelon", "Medulla_Spinalis"),
    "Esophagus": ("Esophagus", "Oesophagus", "Esophagus_Cerv", "Esoph", "Oesophagus_Cerv"),
    "Larynx": ("Larynx",),
    "Mandible": ("Bone_Mandible", "Mandible", "Mandibula", "Bone_Mandibula"),
}
LATERAL: dict[str, tuple[str, tuple[str, ...]]] = {
    "LeftParotid": ("L", ("Parotid", "Parotid_Gland", "Gland_Parotid", "Parotis")),
    "RightParotid": ("R", ("Parotid", "Parotid_Gland", "Gland_Parotid", "Parotis")),
}
SIDES = {"L": ("L", "Lt", "Lft", "Left"), "R": ("R", "Rt", "Rgt", "Right")}
# ROI names (normalised) and interpreted type that mark the patient outline, used for the possible-dose mask.
BODY_NAMES = ("body", "external", "skin", "outline", "patient", "bodycontour", "externalcontour")
BODY_TYPE = "EXTERNAL"
# A ROI is bone when its name (or the protocol name it matched, e.g. Mandible) holds one of these words, separated from
# other letters ("Bone_Mandible", "Bones", "C2 Vertebra", "Skull"; not "A_Vertebral_L", an artery); marrow is not
# cortical bone ("Bone_Marrow" is not bone). Used by the bulk-density synthetic CT of MRI-only planning.
BONE_WORDS = re.compile(r"(?<![a-z])(bones?|mandible|mandibula|maxilla|skull|cranium|vertebrae?)(?![a-z])",
                        re.IGNORECASE)
NOT_BONE_WORDS = re.compile(r"marrow", re.IGNORECASE)


class NameOverrideError(ValueError):
    """An override file that cannot be used; the message names the file and the fix."""


def normalise(name: str) -> str:
    """Lower case, trailing ``.0`` of numbers dropped, everything but letters and digits removed."""
    name = re.sub(r"(\d)\.0+(?!\d)", r"\1", name.strip().lower())
    return re.sub(r"[^a-z0-9]", "", name)


def _target_synonyms(name: str, prescription_gy: float | None) -> tuple[str, ...]:
    """PTV70 is also PTV_70, PTV 70Gy, PTV_7000 and PTV7000cGy (the dose taken from the protocol)."""
    kind = re.match(r"^(PTV|CTV|GTV)", name, re.IGNORECASE)
    if not kind or prescription_gy is None:
        return ()
    gy = f"{prescription_gy:g}"
    cgy = f"{round(prescription_gy * 100)}"
    return tuple(f"{kind.group(1)}_{dose}" for dose in (gy, f"{gy}Gy", cgy, f"{cgy}cGy"))


@dataclass
class NameTable:
    """Normalised ROI name -> canonical name for one protocol, built-in synonyms plus site overrides."""

    protocol_names: tuple[str, ...]
    synonyms: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)

    def lookup(self, roi_name: str) -> tuple[str | None, str]:
        """The canonical name for a ROI name and how it matched: 'override', 'exact', 'synonym' or ''."""
        key = normalise(roi_name)
        if key in self.overrides:
            return self.overrides[key], "override"
        canonical = self.synonyms.get(key)
        if canonical is None:
            return None, ""
        return canonical, "exact" if key == normalise(canonical) else "synonym"


def build_name_table(protocol: Protocol, overrides: Path | str | None = None) -> NameTable:
    """The mapping for a protocol: every canonical name, its synonyms, and the site's override file."""
    synonyms: dict[str, str] = {}
    for structure in protocol.structures:
        name = structure.name
        spellings = [*SYNONYMS.get(name, ()), *_target_synonyms(name, structure.prescription_gy)]
        if name in LATERAL:
            side, bases = LATERAL[name]
            spellings += [f"{s}_{b}" for b in bases for s in SIDES[side]]
            spellings += [f"{b}_{s}" for b in bases for s in SIDES[side]]
        for spelling in spellings:
            synonyms.setdefault(normalise(spelling), name)
        synonyms[normalise(name)] = name
    table = NameTable(protocol.structure_names, synonyms)
    if overrides is not None:
        table.overrides = read_overrides(Path(overrides), protocol)
    return table


def read_overrides(path: Path, protocol: Protocol) -> dict[str, str]:
    """Read a site override file: canonical name -> local ROI name(s); errors name the file and the fix."""
    fix = "write one line per protocol structure, e.g. 'SpinalCord: [Myelon, Cord2]'"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise NameOverrideError(f"structure-name override file {path} not found") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise NameOverrideError(f"{path}: not a readable YAML file ({exc}); {fix}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NameOverrideError(f"{path}: expected a mapping of canonical name -> local names; {fix}")
    out: dict[str, str] = {}
    for canonical, local in data.items():
        if canonical not in protocol.structure_names:
            raise NameOverrideError(
                f"{path}: {canonical!r} is not a structure of protocol {protocol.name} "
                f"({', '.join(protocol.structure_names)}); use the protocol's canonical names as keys")
        names = [local] if isinstance(local, str) else local
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise NameOverrideError(f"{path}: {canonical}: expected a name or a list of names; {fix}")
        for name in names:
            key = normalise(name)
            if out.get(key, canonical) != canonical:
                raise NameOverrideError(f"{path}: {name!r} is listed under both {out[key]} and {canonical}; "
                                        "list each local name once")
            out[key] = canonical
    return out


@dataclass
class NameMatch:
    """What matched: canonical -> ROI name used, ROI names left over, canonical names not found, clashes."""

    matched: dict[str, str] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"matched": {c: {"roi": r, "how": self.how[c]} for c, r in self.matched.items()},
                "unmatched": self.unmatched, "missing": self.missing, "ambiguous": self.ambiguous}


_PRIORITY = {"override": 0, "exact": 1, "synonym": 2}


def match_names(roi_names: list[str], table: NameTable) -> NameMatch:
    """Match a structure set's ROI names; of several candidates an override beats the exact name beats a
    synonym, then the first in the file wins (and the clash is reported).
    """
    candidates: dict[str, list[tuple[int, int, str]]] = {}
    result = NameMatch()
    for order, roi in enumerate(roi_names):
        canonical, how = table.lookup(roi)
        if canonical is None:
            result.unmatched.append(roi)
        else:
            candidates.setdefault(canonical, []).append((_PRIORITY[how], order, roi))
    for canonical in table.protocol_names:
        found = sorted(candidates.get(canonical, []))
        if not found:
            result.missing.append(canonical)
            continue
        result.matched[canonical] = found[0][2]
        result.how[canonical] = table.lookup(found[0][2])[1]
        if len(found) > 1:
            result.ambiguous[canonical] = [roi for _, _, roi in found]
    return result


def is_body(roi_name: str, interpreted_type: str) -> bool:
    """Whether a ROI is the patient outline (by interpreted type EXTERNAL or a usual name)."""
    return interpreted_type.upper() == BODY_TYPE or normalise(roi_name) in BODY_NAMES


def is_bone(roi_name: str) -> bool:
    """Whether a ROI name (or the canonical name it matched) says bone (``BONE_WORDS``, not ``NOT_BONE_WORDS``)."""
    return bool(BONE_WORDS.search(roi_name)) and not NOT_BONE_WORDS.search(roi_name)
