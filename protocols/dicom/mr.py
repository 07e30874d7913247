"""Read an MR image series into a volume (float32, arbitrary units) on its own grid, as the CT is read.

Classic MR Image Storage (one slice per file) is read by :mod:`protocols.dicom.series`, the CT's reader, with the
rescale applied when present (MR values have no physical unit; vendors may scale them as they like). Multi-frame
objects (Enhanced and Legacy Converted Enhanced MR) and Siemens mosaics (many slices tiled into one image) are
refused with the export that fedrt reads; a single slice is a volume one slice thick.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from protocols.dicom.attributes import text
from protocols.dicom.series import ImageSeries, Item, SeriesKind, read_image_series, rescaled, series_name
from protocols.validation import CaseReport, Severity

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MULTI_FRAME_MR = {  # MR image storage classes that hold a whole series in one multi-frame object
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
MR_STORAGE = (MR_IMAGE_STORAGE, *MULTI_FRAME_MR)  # every MR image class the import collects (not spectroscopy)
FIX_REEXPORT = "re-export the MR series from the scanner or PACS"
FIX_CLASSIC = ("export the MR as classic single-frame MR images (MR Image Storage, one file per slice), e.g. with "
               "the scanner's or PACS's classic/legacy DICOM export")
FIX_MOSAIC = "export the MR with one image per slice (not a mosaic), or split the mosaic (e.g. dcm2niix) first"


def read_mr_series(slices: list[Item], report: CaseReport) -> ImageSeries | None:
    """Read one MR series' slices (any order); None after an ERROR finding that names the file and the fix."""
    for path, ds in slices:
        sop_class = text(ds, "SOPClassUID")
        if sop_class in MULTI_FRAME_MR:
            report.add(Severity.ERROR, "multi-frame-mr", f"{path.name} is a multi-frame {MULTI_FRAME_MR[sop_class]} "
                       f"object ({series_name(slices, 'MR')}); fedrt reads classic single-frame MR", path, FIX_CLASSIC)
            return None
        if "MOSAIC" in text(ds, "ImageType").upper():
            report.add(Severity.ERROR, "mr-mosaic", f"{path.name} is a Siemens mosaic (ImageType MOSAIC): many "
                       "slices tiled into one image", path, FIX_MOSAIC)
            return None
    return read_image_series(slices, report, SeriesKind("MR", FIX_REEXPORT, mr_signal, lone_plane=True))


def mr_signal(ds: Dataset, path: Path, report: CaseReport) -> np.ndarray:
    """One MR slice's values in arbitrary units: the stored values, rescaled when the file says how."""
    return rescaled(ds, "MR")
