"""Read an RT Dose grid in Gy on its own grid (DoseGridScaling, GridFrameOffsetVector) for resampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from protocols.dicom.attributes import MALFORMED, AttributeProblem, floats, integer, number, pixel_data, sequence, text
from protocols.dicom.geometry import SliceStack, VolumeGrid, resample, stack_to_volume
from protocols.validation import CaseReport, Severity

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
FIX_REEXPORT = "re-export the plan dose from the planning system (DoseUnits GY, DoseSummationType PLAN)"


@dataclass
class RtDose:
    """A dose volume in Gy (float32, case axis order) on the dose grid, with what it belongs to."""

    dose_gy: np.ndarray
    grid: VolumeGrid
    path: Path
    frame_of_reference_uid: str
    summation_type: str
    referenced_plan_uids: tuple[str, ...]

    def on_grid(self, grid: VolumeGrid) -> np.ndarray:
        """The dose resampled (trilinear) onto another grid, zero outside the dose grid."""
        return np.maximum(resample(self.dose_gy, self.grid, grid, order=1, cval=0.0), 0.0).astype(np.float32)


def read_rtdose(ds: Dataset, path: Path, report: CaseReport) -> RtDose | None:
    """Read one RTDOSE object; None after an ERROR finding naming the file and the fix."""
    try:
        return _read(ds, path, report)
    except AttributeProblem as exc:
        report.add(Severity.ERROR, "bad-attribute", f"RTDOSE: {exc}", path, FIX_REEXPORT)
    except MALFORMED as exc:
        report.add(Severity.ERROR, "unreadable", f"RTDOSE cannot be decoded ({exc})", path, FIX_REEXPORT)
    return None


def _read(ds: Dataset, path: Path, report: CaseReport) -> RtDose | None:
    units = text(ds, "DoseUnits").upper()
    if units != "GY":
        report.add(Severity.ERROR, "dose-units", f"DoseUnits is {units or '(missing)'!r}; fedrt needs absolute "
                   "dose in GY (RELATIVE or CGY doses cannot be compared with a prescription)", path, FIX_REEXPORT)
        return None
    dose_type = text(ds, "DoseType").upper()
    if dose_type == "ERROR":
        report.add(Severity.ERROR, "dose-type", "DoseType is ERROR (a dose difference, not a dose)", path,
                   FIX_REEXPORT)
        return None
    if dose_type == "EFFECTIVE":
        report.add(Severity.WARNING, "dose-type", "DoseType is EFFECTIVE (biologically weighted), not PHYSICAL",
                   path, "export the physical dose if the protocol expects it")
    scaling = number(ds, "DoseGridScaling", 1.0)
    orientation = floats(ds, "ImageOrientationPatient", 6)
    position = floats(ds, "ImagePositionPatient", 3)
    spacing = floats(ds, "PixelSpacing", 2)
    if np.any(spacing <= 0) or scaling <= 0:
        raise AttributeProblem(f"PixelSpacing {spacing.tolist()} and DoseGridScaling {scaling} must be positive")
    frames = integer(ds, "NumberOfFrames", 1)
    offsets = floats(ds, "GridFrameOffsetVector", frames) if frames > 1 else np.zeros(1)
    pixels = pixel_data(ds)
    pixels = pixels.reshape(1, *pixels.shape) if pixels.ndim == 2 else pixels
    if pixels.ndim != 3 or pixels.shape[0] != frames:
        raise AttributeProblem(f"pixel data of shape {pixels.shape} does not match NumberOfFrames {frames}")
    normal = np.cross(orientation[:3], orientation[3:])
    # GridFrameOffsetVector: relative to the first frame when it starts at 0, otherwise absolute positions
    # along the normal (the standard's two forms).
    start = 0.0 if offsets[0] == 0 else position @ normal
    positions = position + np.outer(offsets - start, normal)
    dose = pixels.astype(np.float32) * np.float32(scaling)
    stack = SliceStack(dose, positions, orientation[:3], orientation[3:], (float(spacing[0]), float(spacing[1])))
    result = stack_to_volume(stack, report, path, "RTDOSE")
    if result is None:
        return None
    volume, grid = result
    plans = tuple(text(item, "ReferencedSOPInstanceUID") for item in sequence(ds, "ReferencedRTPlanSequence"))
    return RtDose(volume, grid, path, text(ds, "FrameOfReferenceUID"), text(ds, "DoseSummationType").upper(),
                  tuple(p for p in plans if p))
