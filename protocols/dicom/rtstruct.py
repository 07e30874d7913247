"""Read an RT Structure Set: its ROIs and closed planar contours, rasterised onto the CT grid on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from protocols.dicom.attributes import MALFORMED, AttributeProblem, floats, integer, sequence, text
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.raster import fill_polygons
from protocols.validation import CaseReport, Severity

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
FIX_REEXPORT = "re-export the structure set from the planning system"
PLANE_TOLERANCE = 0.1  # a contour this many slice spacings off a CT slice plane is reported


@dataclass
class Roi:
    """One region of interest: its closed planar contours as (N, 3) LPS points in mm."""

    number: int
    name: str
    interpreted_type: str = ""
    color: tuple[int, int, int] | None = None
    contours: list[np.ndarray] = field(default_factory=list)


@dataclass
class StructureSet:
    """The ROIs of one RTSTRUCT and what it says about the CT it was drawn on."""

    path: Path
    sop_instance_uid: str
    study_uid: str
    frame_of_reference_uid: str  # empty when the vendor left it out
    referenced_images: dict[str, set[str]]  # CT series UID ("" when not given) -> SOP instances the contours are on
    rois: list[Roi]
    date: str = ""

    @property
    def referenced_series_uids(self) -> set[str]:
        """The CT series the structure set says it was drawn on."""
        return set(self.referenced_images) - {""}

    @property
    def referenced_image_uids(self) -> set[str]:
        """The CT images its contours are on, of any series."""
        return set().union(*self.referenced_images.values())


def read_structure_set(ds: Dataset, path: Path, report: CaseReport) -> StructureSet | None:
    """Parse the ROIs and contours; None after an ERROR finding. Skipped contours are reported."""
    try:
        return _read(ds, path, report)
    except AttributeProblem as exc:
        report.add(Severity.ERROR, "bad-attribute", f"RTSTRUCT: {exc}", path, FIX_REEXPORT)
    except MALFORMED as exc:
        report.add(Severity.ERROR, "unreadable", f"RTSTRUCT cannot be parsed ({exc})", path, FIX_REEXPORT)
    return None


def _read(ds: Dataset, path: Path, report: CaseReport) -> StructureSet | None:
    frames: set[str] = set()
    images: dict[str, set[str]] = {}
    for frame in sequence(ds, "ReferencedFrameOfReferenceSequence"):
        frames.add(text(frame, "FrameOfReferenceUID"))
        for study in sequence(frame, "RTReferencedStudySequence"):
            for series in sequence(study, "RTReferencedSeriesSequence"):
                images.setdefault(text(series, "SeriesInstanceUID"), set()).update(
                    uid for item in sequence(series, "ContourImageSequence")
                    if (uid := text(item, "ReferencedSOPInstanceUID")))
    rois: dict[int, Roi] = {}
    for item in sequence(ds, "StructureSetROISequence"):
        number = integer(item, "ROINumber")
        rois[number] = Roi(number, text(item, "ROIName", f"ROI {number}"))
        frames.add(text(item, "ReferencedFrameOfReferenceUID"))
    if not rois:
        report.add(Severity.ERROR, "no-rois", "StructureSetROISequence is empty or missing", path, FIX_REEXPORT)
        return None
    for item in sequence(ds, "RTROIObservationsSequence"):
        roi = rois.get(integer(item, "ReferencedROINumber", -1))
        if roi is not None:
            roi.interpreted_type = text(item, "RTROIInterpretedType").upper()
    skipped: dict[str, int] = {}
    for item in sequence(ds, "ROIContourSequence"):
        roi = rois.get(integer(item, "ReferencedROINumber", -1))
        if roi is None:
            report.add(Severity.WARNING, "orphan-contour", "ROIContourSequence item references ROI number "
                       f"{text(item, 'ReferencedROINumber', '(none)')}, which the structure set does not define",
                       path, FIX_REEXPORT)
            continue
        try:
            color = floats(item, "ROIDisplayColor", 3)
            roi.color = tuple(int(c) for c in np.clip(color, 0, 255))
        except AttributeProblem:
            roi.color = None
        for contour in sequence(item, "ContourSequence"):
            kind = text(contour, "ContourGeometricType", "CLOSED_PLANAR").upper()
            points = floats(contour, "ContourData")
            if kind != "CLOSED_PLANAR" or points.size < 9 or points.size % 3:
                skipped[roi.name] = skipped.get(roi.name, 0) + 1
                continue
            roi.contours.append(points.reshape(-1, 3))
    for name, count in skipped.items():
        report.add(Severity.NOTE, "skipped-contour", f"{name}: {count} contour(s) that are not closed planar "
                   "polygons (points, open lines) ignored", path)
    frames.discard("")
    if len(frames) > 1:
        report.add(Severity.ERROR, "mixed-frames", f"the structure set refers to {len(frames)} frames of "
                   "reference", path, "export one structure set per CT (one frame of reference)")
        return None
    return StructureSet(
        path=path,
        sop_instance_uid=text(ds, "SOPInstanceUID"),
        study_uid=text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=frames.pop() if frames else "",
        referenced_images=images,
        rois=sorted(rois.values(), key=lambda r: r.number),
        date=text(ds, "StructureSetDate") + text(ds, "StructureSetTime"),
    )


def rasterise_roi(roi: Roi, grid: VolumeGrid, report: CaseReport, path: Path) -> np.ndarray:
    """The ROI as a boolean mask on the grid: each contour on its nearest slice, even-odd per slice."""
    mask = np.zeros(grid.shape, dtype=bool)
    by_slice: dict[int, list[np.ndarray]] = {}
    off_plane, outside, not_planar = 0.0, 0, 0
    for points in roi.contours:
        index = grid.to_index(points)
        k = index[:, 2]
        if np.ptp(k) > PLANE_TOLERANCE:
            not_planar += 1
            continue
        nearest = int(np.round(k.mean()))
        if not 0 <= nearest < grid.shape[2]:
            outside += 1
            continue
        off_plane = max(off_plane, abs(k.mean() - nearest))
        by_slice.setdefault(nearest, []).append(index[:, [1, 0]])  # (column, row) = (axis 1, axis 0)
    for k, polygons in by_slice.items():
        mask[:, :, k] = fill_polygons(polygons, grid.shape[:2])
    if not_planar:
        report.add(Severity.WARNING, "non-axial-contour", f"{roi.name}: {not_planar} contour(s) not in an axial "
                   "plane ignored", path, "contour on the axial CT slices")
    if outside:
        report.add(Severity.WARNING, "contour-outside-ct", f"{roi.name}: {outside} contour(s) beyond the CT's "
                   "first or last slice ignored", path, "check the structure set belongs to this CT")
    if off_plane > PLANE_TOLERANCE:
        report.add(Severity.WARNING, "contour-between-slices", f"{roi.name}: contours lie up to "
                   f"{off_plane * grid.spacing_mm[2]:.2f} mm off the CT slice planes; each was put on the "
                   "nearest slice", path, "check the structure set was drawn on this CT series")
    return mask
