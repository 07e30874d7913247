"""Write DICOM: a CT series, an RT Structure Set from masks and an RT Dose, all in one study and frame.

Every object starts from :func:`protocols.dicom.header.new_dataset` (the modules all of a study's objects share)
and passes ``dciodvfy`` without errors. Contours are traced on the CT slices they belong to
(``raster.trace_polygons``) and reference those slices, the CT series and the frame of reference. The dose
is a multi-frame 16-bit grid on the CT grid with relative GridFrameOffsetVector (first value 0).
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from protocols.case import Case
from protocols.dicom.ct import CT_IMAGE_STORAGE
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.header import MANUFACTURER, StudyContext, new_dataset, save_dataset, software_version
from protocols.dicom.raster import trace_polygons
from protocols.dicom.rtdose import RT_DOSE_STORAGE
from protocols.dicom.rtplan import RT_PLAN_STORAGE
from protocols.dicom.rtstruct import RT_STRUCTURE_SET_STORAGE
from protocols.errors import ConfigError
from protocols.files import staged_folder
from protocols.protocol import Protocol

PALETTE = ((255, 0, 0), (0, 160, 255), (0, 200, 0), (255, 160, 0), (200, 0, 255), (0, 220, 200),
           (255, 90, 160), (150, 110, 40), (120, 120, 255), (200, 200, 0))
LO_MAX_CHARS = 64  # a DICOM long string holds at most 64 characters
ST_MAX_CHARS = 1024  # a DICOM short text holds at most 1024 characters
DOSE_MAX_STORED = 2**16 - 1  # 16-bit dose: steps of max/65535 (about 1 mGy), read by every system


@dataclass
class CtReference:
    """What an RT object needs to reference a written CT series: its UIDs and each slice's SOP instance."""

    series_uid: str
    sop_instance_uids: tuple[str, ...]


@dataclass
class ExportedStudy:
    """Paths of what :func:`export_case` wrote."""

    folder: Path
    ct_files: list[Path]
    rtstruct: Path | None
    rtdose: Path | None


def centred_grid(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> VolumeGrid:
    """A grid whose centre is the DICOM origin (0, 0, 0), for arrays that carry no position of their own.

    The origin is rounded to 1 um so that positions fit a DICOM decimal string (16 characters).
    """
    half = (np.asarray(shape) - 1) / 2.0 * np.asarray(spacing_mm)
    origin = tuple(round(float(v), 3) for v in (-half[1], -half[0], half[2]))
    return VolumeGrid(tuple(shape), tuple(float(s) for s in spacing_mm), origin)


def write_ct_series(ct_hu: np.ndarray, grid: VolumeGrid, folder: Path, context: StudyContext,
                    description: str = "CT", derivation: str = "", patient_position: str = "HFS") -> tuple[
        CtReference, list[Path]]:
    """One CT Image file per slice (axis 2, superior first), HU stored as signed 16-bit with slope 1.

    ``description`` is the SeriesDescription; ``derivation`` (DerivationDescription) says how the images were made
    when they are not a scan, e.g. a synthetic CT from an MR; both are cut to what their VR holds.
    """
    series_uid = generate_uid()
    stored = np.clip(np.round(ct_hu), -32768, 32767).astype(np.int16)
    uids, paths = [], []
    for k in range(grid.shape[2]):
        ds = new_dataset(context, CT_IMAGE_STORAGE, "CT", 1, description[:LO_MAX_CHARS], series_uid, k + 1)
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        if derivation:
            ds.DerivationDescription = derivation[:ST_MAX_CHARS]
        ds.PatientPosition = patient_position
        ds.Laterality = ""  # type 2C, unknown for arrays without anatomy metadata (dciodvfy: a warning)
        ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
        ds.AcquisitionNumber = 1
        ds.PatientOrientation = ""
        ds.ImagePositionPatient = [float(v) for v in grid.to_mm((0, 0, k))]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(grid.spacing_mm[0]), float(grid.spacing_mm[1])]
        ds.SliceThickness = float(grid.spacing_mm[2])
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.KVP = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = grid.shape[0], grid.shape[1]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k]).tobytes()
        uids.append(ds.SOPInstanceUID)
        paths.append(save_dataset(ds, folder / f"CT.{k + 1:04d}.dcm"))
    return CtReference(series_uid, tuple(uids)), paths


def write_rtstruct(masks: dict[str, np.ndarray], grid: VolumeGrid, ct: CtReference, path: Path,
                   context: StudyContext, interpreted_types: dict[str, str] | None = None,
                   generation: dict[str, str] | None = None) -> Path:
    """An RT Structure Set with one ROI per mask, contoured on the referenced CT slices.

    ``generation`` names the ROIs fedrt drew and what drew them (e.g. the model): those are written
    ``AUTOMATIC`` with that description; the others' generation is left unknown (empty).
    """
    ds = new_dataset(context, RT_STRUCTURE_SET_STORAGE, "RTSTRUCT", 2, "Structures")
    ds.StructureSetLabel = "fedrt"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    frame = Dataset()
    frame.FrameOfReferenceUID = context.frame_of_reference_uid
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, customary)
    study.ReferencedSOPInstanceUID = context.study_uid
    series = Dataset()
    series.SeriesInstanceUID = ct.series_uid
    series.ContourImageSequence = Sequence([_image_ref(uid) for uid in ct.sop_instance_uids])
    study.RTReferencedSeriesSequence = Sequence([series])
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    rois, contours, observations = [], [], []
    types = interpreted_types or {}
    for number, (name, mask) in enumerate(masks.items(), start=1):
        items = roi_items(number, name, mask, grid, ct, context.frame_of_reference_uid, types.get(name, "ORGAN"),
                          (generation or {}).get(name))
        for items_of_kind, item in zip((rois, contours, observations), items, strict=True):
            items_of_kind.append(item)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    return save_dataset(ds, path)


def roi_items(number: int, name: str, mask: np.ndarray, grid: VolumeGrid, ct: CtReference, frame_uid: str,
              interpreted_type: str, generated_by: str | None) -> tuple[Dataset, Dataset, Dataset]:
    """One ROI's StructureSetROI, ROIContour and RTROIObservations items."""
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = name
    roi.ROIGenerationAlgorithm = "AUTOMATIC" if generated_by else ""
    if generated_by:
        roi.ROIGenerationDescription = generated_by[:LO_MAX_CHARS]
    item = Dataset()
    item.ROIDisplayColor = list(PALETTE[(number - 1) % len(PALETTE)])
    item.ContourSequence = Sequence(_contours(mask, grid, ct))
    item.ReferencedROINumber = number
    if not item.ContourSequence:
        del item.ContourSequence
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = interpreted_type
    observation.ROIInterpreter = ""
    return roi, item, observation


def add_rois(structure_set: Dataset, masks: dict[str, np.ndarray], grid: VolumeGrid, ct: CtReference,
             generated_by: str, path: Path) -> tuple[Path, dict[str, int]]:
    """A new version of a patient's structure set: all its ROIs, plus ``masks`` drawn by ``generated_by``.

    The copy gets its own instance and series (same study and frame of reference); returns the file and the
    ROI number of every ROI by name.
    """
    ds = copy.deepcopy(structure_set)
    now = dt.datetime.now()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.StructureSetLabel = "fedrt"
    ds.SeriesDescription = "Structures + fedrt auto-contours"
    frame = str(ds.get("FrameOfReferenceUID", "") or ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
    for keyword, value in (("OperatorsName", ""), ("FrameOfReferenceUID", frame), ("PositionReferenceIndicator", "")):
        if keyword not in ds:  # modules the source system left incomplete: this new object is whole
            setattr(ds, keyword, value)
    ds.Manufacturer, ds.SoftwareVersions = MANUFACTURER, software_version()
    numbers = {str(r.ROIName): int(r.ROINumber) for r in ds.StructureSetROISequence}
    for name, mask in masks.items():
        number = max(numbers.values(), default=0) + 1
        roi, contour, observation = roi_items(number, name, mask, grid, ct, frame, "ORGAN", generated_by)
        ds.StructureSetROISequence.append(roi)
        ds.ROIContourSequence.append(contour)
        ds.RTROIObservationsSequence.append(observation)
        numbers[name] = number
    return save_dataset(ds, path), numbers


def _image_ref(uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    ref.ReferencedSOPInstanceUID = uid
    return ref


def _contours(mask: np.ndarray, grid: VolumeGrid, ct: CtReference) -> list[Dataset]:
    items = []
    on_slices = len(ct.sop_instance_uids) == grid.shape[2]  # a resampled series has no slice to reference
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        for ring in trace_polygons(mask[:, :, k]):
            index = np.column_stack([ring[:, 1], ring[:, 0], np.full(len(ring), float(k))])
            points = grid.to_mm(index)
            item = Dataset()
            if on_slices:
                item.ContourImageSequence = Sequence([_image_ref(ct.sop_instance_uids[k])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.3f}".rstrip("0").rstrip(".") for v in points.ravel()]
            items.append(item)
    return items


def write_rtdose(dose_gy: np.ndarray, grid: VolumeGrid, path: Path, context: StudyContext,
                 plan_uid: str) -> Path:
    """A multi-frame RT Dose (unsigned 16-bit, DoseGridScaling in Gy) on the grid, frames superior first."""
    ds = new_dataset(context, RT_DOSE_STORAGE, "RTDOSE", 3, "Dose")
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    dose = np.maximum(np.asarray(dose_gy, dtype=np.float64), 0.0)
    scaling = float(dose.max()) / DOSE_MAX_STORED if dose.max() > 0 else 1.0
    scaling = float(f"{scaling:.8e}")  # DS holds at most 16 characters; round before scaling the pixels
    stored = np.clip(np.round(dose / scaling), 0, DOSE_MAX_STORED).astype(np.uint16)
    ds.ImagePositionPatient = [float(v) for v in grid.to_mm((0, 0, 0))]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [float(grid.spacing_mm[0]), float(grid.spacing_mm[1])]
    ds.SliceThickness = float(grid.spacing_mm[2])
    ds.NumberOfFrames = grid.shape[2]
    ds.FrameIncrementPointer = 0x3004000C
    ds.GridFrameOffsetVector = [-float(grid.spacing_mm[2]) * k for k in range(grid.shape[2])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[0], grid.shape[1]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = scaling
    plan = Dataset()
    plan.ReferencedSOPClassUID = RT_PLAN_STORAGE
    plan.ReferencedSOPInstanceUID = plan_uid
    ds.ReferencedRTPlanSequence = Sequence([plan])
    ds.PixelData = np.ascontiguousarray(stored.transpose(2, 0, 1)).tobytes()
    return save_dataset(ds, path)


def write_study(case: Case, folder: Path, grid: VolumeGrid, protocol: Protocol | None,
                context: StudyContext, generation: dict[str, str] | None = None) -> ExportedStudy:
    """Write a case as CT series + RTSTRUCT (+ RTDOSE when it has a dose) into an existing folder.

    Targets of ``protocol`` get the interpreted type PTV, other structures ORGAN (without a protocol, names
    starting with PTV are the targets).
    """
    if grid.shape != case.shape:
        raise ConfigError(f"grid shape {grid.shape} does not match the case's arrays {case.shape}; give the grid "
                          "the case was read on")
    targets = set(protocol.targets) if protocol else {n for n in case.structures if n.upper().startswith("PTV")}
    types = {name: "PTV" if name in targets else "ORGAN" for name in case.structures}
    ct_ref, ct_files = write_ct_series(case.ct_hu, grid, folder, context)
    masks = {name: mask for name, mask in case.structures.items() if mask.any()}
    rtstruct = write_rtstruct(masks, grid, ct_ref, folder / "RTSTRUCT.dcm", context, types, generation)
    rtdose = None
    if case.dose_gy is not None:
        rtdose = write_rtdose(case.dose_gy, grid, folder / "RTDOSE.dcm", context, generate_uid())
    return ExportedStudy(folder, ct_files, rtstruct, rtdose)


def export_case(case: Case, out_dir: Path | str, grid: VolumeGrid | None = None,
                protocol: Protocol | None = None, context: StudyContext | None = None,
                fix: str = "give a new or empty output folder") -> ExportedStudy:
    """Write a case with :func:`write_study` into a new or empty folder, which appears complete or not at all.

    ``grid`` places the arrays in patient coordinates (default: centred on the DICOM origin); ``fix`` is what a
    non-empty ``out_dir`` tells the user to do.
    """
    out_dir = Path(out_dir)
    with staged_folder(out_dir, fix=fix) as staging:
        written = write_study(case, staging, grid or centred_grid(case.shape, case.spacing_mm), protocol,
                              context or StudyContext(case.patient_id))
    return ExportedStudy(out_dir, [out_dir / p.name for p in written.ct_files], out_dir / written.rtstruct.name,
                         out_dir / written.rtdose.name if written.rtdose else None)
