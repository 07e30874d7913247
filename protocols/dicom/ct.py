"""Read a CT image series into a volume in HU on its own grid, with the checks the RT primer lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from protocols.dicom.attributes import has
from protocols.dicom.series import ImageSeries, SeriesKind, read_image_series, rescaled
from protocols.validation import CaseReport, Severity

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
FIX_REEXPORT = "re-export the CT series from the scanner or planning system"


@dataclass
class CtSeries(ImageSeries):
    """A CT volume in HU (float32, case axis order) with the UIDs that other RT objects reference."""

    @property
    def ct_hu(self) -> np.ndarray:
        """The volume in HU."""
        return self.values


def read_ct_series(slices: list[tuple[Path, Dataset]], report: CaseReport) -> CtSeries | None:
    """Read one series' slices (any order); None after an ERROR finding that names the file and the fix."""
    series = read_image_series(slices, report, SeriesKind("CT", FIX_REEXPORT, _hu))
    if series is None:
        return None
    _check_values(series.values, series.folder, report)
    return CtSeries(**vars(series))


def _hu(ds: Dataset, path: Path, report: CaseReport) -> np.ndarray:
    """One slice in HU: stored * RescaleSlope + RescaleIntercept (a missing pair is assumed 1 and 0)."""
    if not has(ds, "RescaleSlope") and not has(ds, "RescaleIntercept"):
        report.add(Severity.WARNING, "no-rescale", "RescaleSlope/RescaleIntercept missing; assumed 1 and 0",
                   path, "check the values are HU (re-export with the rescale attributes)")
    return rescaled(ds, "CT")


def _check_values(volume: np.ndarray, folder: Path, report: CaseReport) -> None:
    low = float(volume.min())
    if low >= -200:
        report.add(Severity.WARNING, "no-air", f"lowest CT value is {low:g} HU; air (about -1000 HU) is missing, "
                   "so the values may not be HU", folder,
                   "check RescaleIntercept (stored values + intercept must give HU)")
