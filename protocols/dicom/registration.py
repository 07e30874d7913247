"""Spatial Registration objects: the rigid transform between two Frames of Reference, or why there is none.

What the matrix maps, per DICOM PS3.3 C.20.2 (Spatial Registration Module) and C.20.2.1.1: each item of the
Registration Sequence (0070,0308) registers the data of its own Frame of Reference UID (the Source RCS) to the
Registered RCS, which is the Frame of Reference of the registration object itself. The item's Frame of Reference
Transformation Matrix (3006,00C6), ``A_M_B`` (16 values, row-major), "describes how to transform a point
(Bx, By, Bz) with respect to RCS_B into (Ax, Ay, Az) with respect to RCS_A": B is the item's frame, A the
registration's, ``p_A = M @ p_B`` in homogeneous coordinates. Two frames registered to the same A are related by
``B_M_C = inv(A_M_B) @ A_M_C`` (Equation C.20.2-3); a frame that is the registration's own maps by the identity.
So an export that puts the MR as an item in the CT's frame and one that puts the CT as an item in the MR's frame
give the same MR -> CT transform. Only a single RIGID matrix per item is used (the standard allows a product of
several; their order is not needed by the exports fedrt knows); a RIGID_SCALE, AFFINE or deformable registration is
reported as not rigid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from protocols.dicom.attributes import MALFORMED, AttributeProblem, floats, sequence, text
from protocols.validation import CaseReport, Severity

SPATIAL_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.1"
DEFORMABLE_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.3"
REGISTRATION_STORAGE = (SPATIAL_REGISTRATION_STORAGE, DEFORMABLE_REGISTRATION_STORAGE)
RIGID = "RIGID"  # FrameOfReferenceTransformationMatrixType of a rotation plus a translation (PS3.3 C.20.2.1.2)
RIGID_TOLERANCE = 1e-3  # how far R^T R may be from the identity and det R from 1 in a matrix typed RIGID


@dataclass(frozen=True)
class FrameMapping:
    """A 4x4 matrix taking points of one frame into another, or (``matrix`` None) why there is none usable."""

    matrix: np.ndarray | None
    problem: str = ""
    path: Path | None = None  # the registration object that gives it


@dataclass
class SpatialRegistration:
    """One registration object: for each frame it registers, the mapping into its own frame (the Registered RCS)."""

    path: Path
    frame_of_reference_uid: str
    into_own: dict[str, FrameMapping] = field(default_factory=dict)

    def links(self, source: str, target: str) -> bool:
        """Whether this object says where both frames lie."""
        frames = {self.frame_of_reference_uid, *self.into_own}
        return bool(source) and bool(target) and source in frames and target in frames

    def transform(self, source: str, target: str) -> FrameMapping:
        """The mapping of ``source`` points into ``target``: inv(A_M_target) @ A_M_source (PS3.3 Eq. C.20.2-3)."""
        into_source, into_target = self._into_own(source), self._into_own(target)
        for mapping in (into_source, into_target):
            if mapping.matrix is None:
                return FrameMapping(None, f"{self.path.name} {mapping.problem}", self.path)
        return FrameMapping(np.linalg.inv(into_target.matrix) @ into_source.matrix, "", self.path)

    def _into_own(self, frame: str) -> FrameMapping:
        if frame in self.into_own:
            return self.into_own[frame]
        return FrameMapping(np.eye(4), "", self.path)  # the registration's own frame


def read_registration(ds: Dataset, path: Path, report: CaseReport) -> SpatialRegistration | None:
    """Read a Spatial (or Deformable) Registration object; None after a WARNING naming the file (it is not needed
    for the CT, only for pairing an MR with it).
    """
    try:
        registration = SpatialRegistration(path, text(ds, "FrameOfReferenceUID"))
        if text(ds, "SOPClassUID") == DEFORMABLE_REGISTRATION_STORAGE:
            for item in sequence(ds, "DeformableRegistrationSequence"):
                registration.into_own[text(item, "SourceFrameOfReferenceUID")] = FrameMapping(
                    None, "is a deformable registration, not a rigid one", path)
        else:
            for item in sequence(ds, "RegistrationSequence"):
                frame = text(item, "FrameOfReferenceUID")
                if frame:  # an item that names images only registers no whole frame
                    registration.into_own[frame] = _mapping(item, path)
    except MALFORMED as exc:
        report.add(Severity.WARNING, "unreadable-registration", f"spatial registration cannot be read ({exc}); not "
                   "used", path, "re-export the registration from the planning or registration system")
        return None
    registration.into_own.pop("", None)
    return registration


def find_transform(registrations: list[SpatialRegistration], source: str, target: str) -> FrameMapping:
    """The rigid mapping of ``source`` points into ``target`` from the first registration (by file) that links the
    two frames usably; else why none does.
    """
    problems = []
    for registration in sorted(registrations, key=lambda r: r.path):
        if registration.links(source, target):
            mapping = registration.transform(source, target)
            if mapping.matrix is not None:
                return mapping
            problems.append(mapping.problem)
    return FrameMapping(None, "; ".join(problems) or "no spatial registration links the two frames")


def _mapping(item: Dataset, path: Path) -> FrameMapping:
    """One Registration Sequence item's matrix into the registration's frame, when it is a single rigid one."""
    matrices = [m for registration in sequence(item, "MatrixRegistrationSequence")
                for m in sequence(registration, "MatrixSequence")]
    if len(matrices) != 1:
        return FrameMapping(None, f"holds {len(matrices)} matrices for one frame; fedrt reads a single rigid one",
                            path)
    kind = text(matrices[0], "FrameOfReferenceTransformationMatrixType").upper()
    if kind != RIGID:
        return FrameMapping(None, f"is {kind or 'of no stated type'}, not {RIGID}", path)
    try:
        matrix = floats(matrices[0], "FrameOfReferenceTransformationMatrix", 16).reshape(4, 4)
    except AttributeProblem as exc:
        return FrameMapping(None, f"has no usable matrix ({exc})", path)
    if not is_rigid(matrix):
        return FrameMapping(None, f"is typed {RIGID} but its matrix {np.round(matrix, 4).tolist()} is not a rotation "
                            "and a translation", path)
    return FrameMapping(matrix, "", path)


def is_rigid(matrix: np.ndarray) -> bool:
    """Whether a 4x4 homogeneous matrix is a proper rotation plus a translation, within ``RIGID_TOLERANCE``."""
    rotation = matrix[:3, :3]
    return (np.allclose(matrix[3], [0, 0, 0, 1], atol=RIGID_TOLERANCE)
            and np.allclose(rotation.T @ rotation, np.eye(3), atol=RIGID_TOLERANCE)
            and abs(np.linalg.det(rotation) - 1) < RIGID_TOLERANCE)
