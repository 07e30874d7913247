"""Read one series of single-frame images (CT, MR) into a volume on its own grid: what every image series shares.

The slices of one SeriesInstanceUID, in any order, are de-duplicated, checked to share rows, columns, spacing and
orientation, decoded, turned into values by the modality's rule (HU for CT, rescaled signal for MR) and stacked
by :func:`protocols.dicom.geometry.stack_to_volume`, which owns the geometry checks. Each modality's reader
(``ct``, ``mr``) gives its own :class:`SeriesKind`; every finding names the file and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from protocols.dicom.attributes import MALFORMED, AttributeProblem, floats, has, number, pixel_data, text
from protocols.dicom.geometry import SliceStack, VolumeGrid, stack_to_volume
from protocols.validation import CaseReport, Severity

Item = tuple[Path, Dataset]
FIX_DECODE = ("decompress the files first (e.g. 'gdcmconv --raw' or 'dcmdjpeg'), or re-export them "
              "uncompressed (Explicit VR Little Endian)")


@dataclass(frozen=True)
class SeriesKind:
    """What differs between image series of two modalities: the name findings use, the fix for a bad series, the
    values of one decoded slice, and whether a single slice is a volume (one slice deep, its thickness).
    """

    modality: str
    fix_reexport: str
    values: Callable[[Dataset, Path, CaseReport], np.ndarray]
    lone_plane: bool = False


@dataclass
class ImageSeries:
    """An image volume (float32, case axis order) on its grid, with the UIDs other objects reference it by."""

    values: np.ndarray
    grid: VolumeGrid
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]  # of the source slices, superior first
    folder: Path
    description: str = ""  # SeriesDescription, e.g. "t1_mprage_tra"


def read_image_series(slices: list[Item], report: CaseReport, kind: SeriesKind) -> ImageSeries | None:
    """Read one series' slices (any order); None after an ERROR finding that names the file and the fix."""
    what = kind.modality
    if not slices:
        report.add(Severity.ERROR, f"no-{what.lower()}", f"no {what} slices given", None, kind.fix_reexport)
        return None
    folder = slices[0][0].parent
    series = {text(ds, "SeriesInstanceUID") for _, ds in slices}
    if len(series) > 1:
        report.add(Severity.ERROR, "mixed-series", f"{len(series)} {what} series mixed in one volume", folder,
                   "give the slices of one SeriesInstanceUID")
        return None
    unique: dict[str, Item] = {}
    for path, ds in slices:
        uid = text(ds, "SOPInstanceUID", str(path))
        if uid in unique:
            report.add(Severity.NOTE, "duplicate-file", f"same {what} slice as {unique[uid][0]}", path)
        else:
            unique[uid] = (path, ds)
    planes, positions, header = [], [], None
    for path, ds in unique.values():
        try:
            this = _plane_header(ds)
            if header is None:
                header = this
            elif not _same_header(header, this):
                report.add(Severity.ERROR, "inconsistent-series", "slice size, pixel spacing or orientation "
                           f"differs from the first slice (found {_show(this)}, first {_show(header)})", path,
                           "give a series whose slices share rows, columns, spacing and orientation")
                return None
            positions.append(floats(ds, "ImagePositionPatient", 3))
            planes.append(kind.values(ds, path, report))
        except AttributeProblem as exc:
            report.add(Severity.ERROR, "bad-attribute", f"{what} slice: {exc}", path, kind.fix_reexport)
            return None
        except MALFORMED as exc:
            _report_undecodable(ds, path, what, exc, kind, report)
            return None
    row, col, spacing, shape = header
    if any(plane.shape != shape for plane in planes):
        report.add(Severity.ERROR, "bad-pixels", f"pixel data does not match Rows x Columns {shape}", folder,
                   kind.fix_reexport)
        return None
    stack = SliceStack(np.stack(planes), np.array(positions), row, col, spacing)
    tilt = [number(ds, "GantryDetectorTilt", 0.0) for _, ds in unique.values() if has(ds, "GantryDetectorTilt")]
    if tilt and max(abs(t) for t in tilt) > 0.01:
        report.add(Severity.ERROR, "gantry-tilt", f"GantryDetectorTilt {max(tilt, key=abs):g} deg", folder,
                   "resample the series to an untilted grid (e.g. plastimatch convert) and re-export it")
        return None
    first = next(iter(unique.values()))[1]
    lone = _slice_thickness(first) if kind.lone_plane else None
    result = stack_to_volume(stack, report, folder, series_name(list(unique.values()), what), lone)
    if result is None:
        return None
    volume, grid = result
    order = np.argsort([-p[2] for p in positions], kind="stable")
    return ImageSeries(
        values=volume.astype(np.float32),
        grid=grid,
        series_uid=series.pop(),
        study_uid=text(first, "StudyInstanceUID"),
        frame_of_reference_uid=text(first, "FrameOfReferenceUID"),
        sop_instance_uids=tuple(list(unique)[i] for i in order),
        folder=folder,
        description=text(first, "SeriesDescription"),
    )


def series_name(slices: list[Item], modality: str) -> str:
    """How findings about a whole series name it: by its files, e.g. "CT (CT.001.dcm .. CT.120.dcm, 120 files)"."""
    names = sorted(path.name for path, _ in slices)
    return f"{modality} ({names[0]})" if len(names) == 1 else (
        f"{modality} ({names[0]} .. {names[-1]}, {len(names)} files)")


def rescaled(ds: Dataset, what: str) -> np.ndarray:
    """One slice's stored values * RescaleSlope + RescaleIntercept (1 and 0 when missing), float32."""
    if not has(ds, "PixelData"):
        raise AttributeProblem("PixelData is missing")
    if int(number(ds, "SamplesPerPixel", 1.0)) != 1:
        raise AttributeProblem(f"SamplesPerPixel must be 1 for {what}")
    slope, intercept = number(ds, "RescaleSlope", 1.0), number(ds, "RescaleIntercept", 0.0)
    if slope == 0:
        raise AttributeProblem("RescaleSlope is 0")
    pixels = pixel_data(ds)
    if pixels.ndim != 2:
        raise AttributeProblem(f"expected one 2-D image per {what} file, found pixel data of shape {pixels.shape}")
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def transfer_syntax(ds: Dataset):
    """The file's transfer syntax UID (a pydicom UID), or None for a dataset read without file meta."""
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _report_undecodable(ds: Dataset, path: Path, what: str, exc: Exception, kind: SeriesKind,
                        report: CaseReport) -> None:
    """The ERROR of a slice whose pixel data cannot be decoded: a compression pydicom cannot undo here is named
    with its transfer syntax; anything else is damaged data.
    """
    syntax, why = transfer_syntax(ds), " ".join(str(exc).split())  # pydicom's reasons span lines
    if syntax is not None and syntax.is_compressed:
        report.add(Severity.ERROR, "compressed-pixels", f"{what} slice {path.name}: pixel data compressed as "
                   f"{syntax.name} ({syntax}), which cannot be decoded here ({why})", path, FIX_DECODE)
    else:
        report.add(Severity.ERROR, "unreadable-pixels", f"{what} slice {path.name}: pixel data cannot be decoded "
                   f"({why})", path, kind.fix_reexport)


def _slice_thickness(ds: Dataset) -> float | None:
    """The depth of a lone slice: SpacingBetweenSlices, else SliceThickness; None when neither is positive."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        if has(ds, keyword):
            value = number(ds, keyword)
            if value > 0:
                return value
    return None


def _plane_header(ds: Dataset) -> tuple[np.ndarray, np.ndarray, tuple[float, float], tuple[int, int]]:
    orientation = floats(ds, "ImageOrientationPatient", 6)
    spacing = floats(ds, "PixelSpacing", 2)
    if np.any(spacing <= 0):
        raise AttributeProblem(f"PixelSpacing must be positive, found {spacing.tolist()}")
    shape = (int(number(ds, "Rows")), int(number(ds, "Columns")))
    if min(shape) < 1:
        raise AttributeProblem(f"Rows and Columns must be positive, found {shape}")
    return orientation[:3], orientation[3:], (float(spacing[0]), float(spacing[1])), shape


def _same_header(a, b) -> bool:
    return (np.allclose(a[0], b[0], atol=1e-4) and np.allclose(a[1], b[1], atol=1e-4)
            and np.allclose(a[2], b[2], atol=1e-4) and a[3] == b[3])


def _show(header) -> str:
    row, col, spacing, shape = header
    return f"{shape[0]}x{shape[1]} at {spacing[0]:g}x{spacing[1]:g} mm, {np.round([*row, *col], 4).tolist()}"
