"""Small synthetic cases and DICOM-folder helpers shared by the DICOM tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
from external import DICOM3TOOLS, require_tool
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from protocols.case import Case
from protocols.dicom.export import export_case
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.header import StudyContext, new_dataset, save_dataset
from protocols.dicom.importer import read_dicom_folder
from protocols.dicom.mr import MR_IMAGE_STORAGE
from protocols.dicom.registration import DEFORMABLE_REGISTRATION_STORAGE, SPATIAL_REGISTRATION_STORAGE
from protocols.dicom.study import DicomCase
from protocols.protocol import Protocol
from protocols.validation import CaseReport, Policy, apply_policy

SIEMENS_MR = Path("/usr/share/doc/dicom3tools/examples/0051.dcm")  # Debian dicom3tools' example: a Siemens mosaic
MET_TYPES = {"MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16, "MET_FLOAT": np.float32}


def small_case(patient_id: str = "synth", shape: tuple[int, int, int] = (24, 28, 8)) -> Case:
    """A body box with a PTV70 (with a hole on one slice), a spinal cord and a dose, on a 2 x 2 x 3 mm grid."""
    ct = np.full(shape, -1000.0, np.float32)
    ct[3:-3, 3:-3, :] = 40.0
    ptv = np.zeros(shape, bool)
    ptv[8:16, 8:18, 2:6] = True
    ptv[11:13, 12:14, 3] = False
    cord = np.zeros(shape, bool)
    cord[17:19, 12:14, :] = True
    dose = np.zeros(shape, np.float32)
    dose[3:-3, 3:-3, :] = 30.0
    dose[ptv] = 70.0
    return Case(patient_id, ct, (2.0, 2.0, 3.0), {"PTV70": ptv, "SpinalCord": cord}, ct > -500, dose)


def export_small(folder: Path, patient_id: str = "synth") -> Path:
    """Export :func:`small_case` as DICOM into ``folder``."""
    export_case(small_case(patient_id), folder)
    return folder


def edit(path: Path, **values) -> None:
    """Set (or, with None, delete) top-level attributes of one DICOM file in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def move_to_other_frame(structure_set: pydicom.Dataset) -> str:
    """Put a structure set on a new Frame of Reference (as if drawn on another scan); returns the new UID."""
    from pydicom.uid import generate_uid

    other = generate_uid()
    structure_set.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other
    for roi in structure_set.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = other
    return other


def ct_files(folder: Path) -> list[Path]:
    """The CT slice files of an export, superior first."""
    return sorted(folder.glob("CT.*.dcm"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1 when both are empty)."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy (dicom3tools) reports for one DICOM file."""
    run = subprocess.run([require_tool("dciodvfy", DICOM3TOOLS), str(path)], capture_output=True, text=True,
                         timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def load_dicom_cases(src: Path, protocol: Protocol | str,
                     policy: Policy | str = Policy.WARN) -> list[tuple[DicomCase | None, CaseReport]]:
    """Every patient under ``src`` read into a case on its CT grid, each report under the validation policy
    (``raise`` raises at the first patient with errors or warnings), as the importer reads them.
    """
    results = []
    for dicom_case, report in read_dicom_folder(src, protocol):
        apply_policy(report, policy)
        results.append((dicom_case, report))
    return results


def rebuild_breast_patient(src: Path, dst: Path, with_plan: bool = True) -> Path:
    """dicompyler-core's breast-boost patient with its whole CT: the one shipped slice copied to the 98 positions
    (and SOP instances) its structure set references, next to the structure set (and the plan).
    """
    dst.mkdir(parents=True, exist_ok=True)
    structures = pydicom.dcmread(src / "rtss.dcm")
    positions = {str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID): float(contour.ContourData[2])
                 for roi in structures.ROIContourSequence for contour in roi.get("ContourSequence", [])
                 if "ContourImageSequence" in contour}
    ct = pydicom.dcmread(src / "ct.0.dcm")
    for number, (uid, z) in enumerate(sorted(positions.items(), key=lambda item: -item[1]), start=1):
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = uid
        ct.ImagePositionPatient = [*ct.ImagePositionPatient[:2], z]
        ct.SliceLocation, ct.InstanceNumber = z, number
        ct.save_as(dst / f"ct.{number}.dcm")
    structures.save_as(dst / "rtss.dcm")
    if with_plan:
        pydicom.dcmread(src / "rtplan.dcm").save_as(dst / "rtplan.dcm")
    return dst


def write_mha(path: Path, array: np.ndarray, grid: VolumeGrid, met_type: str) -> None:
    """A MetaImage (x fastest, z increasing, identity directions = LPS) from an array in case axis order."""
    z_low = grid.origin_mm[2] - (grid.shape[2] - 1) * grid.spacing_mm[2]
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n"
              f"Offset = {grid.origin_mm[0]} {grid.origin_mm[1]} {z_low}\n"
              f"ElementSpacing = {grid.spacing_mm[1]} {grid.spacing_mm[0]} {grid.spacing_mm[2]}\n"
              f"DimSize = {grid.shape[1]} {grid.shape[0]} {grid.shape[2]}\n"
              f"ElementType = {met_type}\nElementDataFile = LOCAL\n")
    data = np.ascontiguousarray(array.transpose(2, 0, 1)[::-1]).astype(MET_TYPES[met_type])
    path.write_bytes(header.encode() + data.tobytes())


def write_mr_series(folder: Path, values: np.ndarray, grid: VolumeGrid, context: StudyContext,
                    description: str = "t1_se_tra", rescale: tuple[float, float] = (0.5, 10.0)) -> list[Path]:
    """An MR Image Storage series, one file ``MR.<n>.dcm`` per slice (axis 2, superior first), on ``grid`` in
    ``context``'s frame; ``values`` (case axis order) stored as signed 16-bit through ``rescale`` (slope, intercept).
    """
    folder.mkdir(parents=True, exist_ok=True)
    slope, intercept = rescale
    stored = np.clip(np.round((values - intercept) / slope), -32768, 32767).astype(np.int16)
    series_uid, paths = generate_uid(), []
    for k in range(grid.shape[2]):
        ds = new_dataset(context, MR_IMAGE_STORAGE, "MR", 3, description, series_uid, k + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 500, 15, 1, 1.5
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [float(v) for v in grid.to_mm((0, 0, k))]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(grid.spacing_mm[0]), float(grid.spacing_mm[1])]
        ds.SliceThickness = float(grid.spacing_mm[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = grid.shape[0], grid.shape[1]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[:, :, k]).tobytes()
        paths.append(save_dataset(ds, folder / f"MR.{k + 1:04d}.dcm"))
    return paths


def write_registration(path: Path, context: StudyContext, into_own: dict[str, np.ndarray],
                       matrix_type: str = "RIGID") -> Path:
    """A Spatial Registration object in ``context``'s frame: one item per frame of ``into_own``, whose 4x4 matrix
    takes that frame's points into the registration's own frame (PS3.3 C.20.2.1.1).
    """
    ds = new_dataset(context, SPATIAL_REGISTRATION_STORAGE, "REG", 4, "Registration")
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.InstanceNumber, ds.ContentLabel, ds.ContentDescription, ds.ContentCreatorName = 1, "REG", "", ""
    items = []
    for frame, matrix in into_own.items():
        entry = Dataset()
        entry.FrameOfReferenceTransformationMatrixType = matrix_type
        entry.FrameOfReferenceTransformationMatrix = [float(v) for v in np.asarray(matrix).ravel()]
        registration = Dataset()
        registration.RegistrationTypeCodeSequence = Sequence([])
        registration.MatrixSequence = Sequence([entry])
        item = Dataset()
        item.FrameOfReferenceUID = frame
        item.MatrixRegistrationSequence = Sequence([registration])
        items.append(item)
    ds.RegistrationSequence = Sequence(items)
    return save_dataset(ds, path)


def write_deformable_registration(path: Path, context: StudyContext, source_frame: str) -> Path:
    """A Deformable Spatial Registration object in ``context``'s frame naming ``source_frame`` (no grid: enough to be
    recognised and refused).
    """
    ds = new_dataset(context, DEFORMABLE_REGISTRATION_STORAGE, "REG", 4, "Deformable registration")
    item = Dataset()
    item.SourceFrameOfReferenceUID = source_frame
    ds.DeformableRegistrationSequence = Sequence([item])
    return save_dataset(ds, path)
