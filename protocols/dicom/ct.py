"""Read a CT image series into a volume in HU on its own grid, with the checks the RT primer lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from protocols.dicom.attributes import MALFORMED, AttributeProblem, floats, has, number, pixel_data, text
from protocols.dicom.geometry import SliceStack, VolumeGrid, stack_to_volume
from protocols.validation import CaseReport, Severity

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
FIX_REEXPORT = "re-export the CT series from the scanner or planning system"
FIX_DECODE = ("decompress the files first (e.g. 'gdcmconv --raw' or 'dcmdjpeg'), or re-export them "
              "uncompressed")


@dataclass
class CtSeries:
    """A CT volume in HU (float32, case axis order) with the UIDs that other RT objects reference."""

    ct_hu: np.ndarray
    grid: VolumeGrid
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]  # of the source slices, superior first
    folder: Path


def read_ct_series(slices: list[tuple[Path, Dataset]], report: CaseReport) -> CtSeries | None:
    """Read one series' slices (any order); None after an ERROR finding that names the file and the fix."""
    if not slices:
        report.add(Severity.ERROR, "no-ct", "no CT slices given", None, FIX_REEXPORT)
        return None
    folder = slices[0][0].parent
    series = {text(ds, "SeriesInstanceUID") for _, ds in slices}
    if len(series) > 1:
        report.add(Severity.ERROR, "mixed-series", f"{len(series)} CT series mixed in one volume", folder,
                   "give the slices of one SeriesInstanceUID")
        return None
    unique: dict[str, tuple[Path, Dataset]] = {}
    for path, ds in slices:
        uid = text(ds, "SOPInstanceUID", str(path))
        if uid in unique:
            report.add(Severity.NOTE, "duplicate-file", f"same CT slice as {unique[uid][0]}", path)
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
            planes.append(_hu(ds, path, report))
        except AttributeProblem as exc:
            report.add(Severity.ERROR, "bad-attribute", f"CT slice: {exc}", path, FIX_REEXPORT)
            return None
        except MALFORMED as exc:
            report.add(Severity.ERROR, "unreadable-pixels", f"CT slice pixel data cannot be decoded ({exc})", path,
                       FIX_DECODE)
            return None
    row, col, spacing, shape = header
    if any(plane.shape != shape for plane in planes):
        report.add(Severity.ERROR, "bad-pixels", f"pixel data does not match Rows x Columns {shape}", folder,
                   FIX_REEXPORT)
        return None
    stack = SliceStack(np.stack(planes), np.array(positions), row, col, spacing)
    tilt = [number(ds, "GantryDetectorTilt", 0.0) for _, ds in unique.values() if has(ds, "GantryDetectorTilt")]
    if tilt and max(abs(t) for t in tilt) > 0.01:
        report.add(Severity.ERROR, "gantry-tilt", f"GantryDetectorTilt {max(tilt, key=abs):g} deg", folder,
                   "resample the series to an untilted grid (e.g. plastimatch convert) and re-export it")
        return None
    result = stack_to_volume(stack, report, folder, _series_name(list(unique.values())))
    if result is None:
        return None
    volume, grid = result
    _check_values(volume, folder, report)
    order = np.argsort([-p[2] for p in positions], kind="stable")
    first = next(iter(unique.values()))[1]
    return CtSeries(
        ct_hu=volume.astype(np.float32),
        grid=grid,
        series_uid=series.pop(),
        study_uid=text(first, "StudyInstanceUID"),
        frame_of_reference_uid=text(first, "FrameOfReferenceUID"),
        sop_instance_uids=tuple(list(unique)[i] for i in order),
        folder=folder,
    )


def _series_name(slices: list[tuple[Path, Dataset]]) -> str:
    """How findings about the whole series name it: by its files, e.g. "CT (CT.001.dcm .. CT.120.dcm, 120 files)"."""
    names = sorted(path.name for path, _ in slices)
    return f"CT ({names[0]})" if len(names) == 1 else f"CT ({names[0]} .. {names[-1]}, {len(names)} files)"


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


def _hu(ds: Dataset, path: Path, report: CaseReport) -> np.ndarray:
    """One slice in HU: stored * RescaleSlope + RescaleIntercept (a missing pair is assumed 1 and 0)."""
    if not has(ds, "PixelData"):
        raise AttributeProblem("PixelData is missing")
    if int(number(ds, "SamplesPerPixel", 1.0)) != 1:
        raise AttributeProblem("SamplesPerPixel must be 1 for CT")
    if not has(ds, "RescaleSlope") and not has(ds, "RescaleIntercept"):
        report.add(Severity.WARNING, "no-rescale", "RescaleSlope/RescaleIntercept missing; assumed 1 and 0",
                   path, "check the values are HU (re-export with the rescale attributes)")
    slope, intercept = number(ds, "RescaleSlope", 1.0), number(ds, "RescaleIntercept", 0.0)
    if slope == 0:
        raise AttributeProblem("RescaleSlope is 0")
    pixels = pixel_data(ds)
    if pixels.ndim != 2:
        raise AttributeProblem(f"expected one 2-D image per CT file, found pixel data of shape {pixels.shape}")
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _check_values(volume: np.ndarray, folder: Path, report: CaseReport) -> None:
    low = float(volume.min())
    if low >= -200:
        report.add(Severity.WARNING, "no-air", f"lowest CT value is {low:g} HU; air (about -1000 HU) is missing, "
                   "so the values may not be HU", folder,
                   "check RescaleIntercept (stored values + intercept must give HU)")
