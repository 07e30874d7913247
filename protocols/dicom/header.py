"""What every DICOM object fedrt writes shares: the file meta and the SOP Common, Patient, General Study, General
Series, Frame of Reference and General Equipment modules, filled the same way for the CT, RTSTRUCT, RTDOSE and
RTPLAN of a study, so the objects of one patient carry identical patient and study attributes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import VR, DSfloat

MANUFACTURER = "fedrt"
DS_MAX_CHARS = 16  # a DICOM decimal string holds at most 16 characters


@dataclass
class StudyContext:
    """Who and what the written objects belong to: patient, study and frame of reference.

    A new study by default; :meth:`of_image` copies an existing image's patient and study, so that objects
    written for a patient's own CT join that patient's study.
    """

    patient_id: str
    patient_name: str = ""
    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    when: dt.datetime = field(default_factory=dt.datetime.now)
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""  # empty: a new study, dated when the objects are written
    study_time: str = ""
    study_id: str = "1"
    accession_number: str = ""
    referring_physician: str = ""

    @classmethod
    def of_image(cls, ds: Dataset) -> StudyContext:
        """The patient, study and frame of reference of an existing image (e.g. the planning CT), copied."""
        def value(keyword: str) -> str:
            return str(ds.get(keyword, "") or "").strip()

        return cls(value("PatientID"), value("PatientName"), value("StudyInstanceUID"),
                   value("FrameOfReferenceUID"), patient_birth_date=value("PatientBirthDate"),
                   patient_sex=value("PatientSex"), study_date=value("StudyDate"), study_time=value("StudyTime"),
                   study_id=value("StudyID"), accession_number=value("AccessionNumber"),
                   referring_physician=value("ReferringPhysicianName"))

    @property
    def person_name(self) -> str:
        """The patient's name as a PN: family^given (the bare form without a caret is a retired one)."""
        name = self.patient_name or self.patient_id
        return name if "^" in name else f"{name}^"


@cache
def software_version() -> str:
    """The installed fedrt version, for SoftwareVersions (a checkout that is not installed says so)."""
    try:
        return version("fedrt")
    except PackageNotFoundError:
        return "not installed"


def new_dataset(context: StudyContext, sop_class: str, modality: str, series_number: int, description: str,
                series_uid: str | None = None, instance: int = 1) -> Dataset:
    """A dataset with the modules every written object shares, ready for its IOD-specific attributes.

    Args:
        context: the patient, study and frame of reference the object belongs to.
        sop_class: the SOP Class UID (also the file meta's media storage class).
        modality: CT, RTSTRUCT, RTDOSE or RTPLAN.
        series_number: the series' number within the study.
        description: the SeriesDescription.
        series_uid: the series the object joins (a CT slice joins its series); a new series by default.
        instance: the InstanceNumber within the series.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    date, time = context.when.strftime("%Y%m%d"), context.when.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.PatientName = context.person_name
    ds.PatientID = context.patient_id
    ds.PatientBirthDate = context.patient_birth_date
    ds.PatientSex = context.patient_sex
    ds.StudyInstanceUID = context.study_uid
    ds.StudyDate = context.study_date or date
    ds.StudyTime = context.study_time or (time if not context.study_date else "")
    ds.StudyID = context.study_id
    ds.AccessionNumber = context.accession_number
    ds.ReferringPhysicianName = context.referring_physician
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.OperatorsName = ""
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = context.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = software_version()
    return ds


def fit_decimal_strings(ds: Dataset) -> Dataset:
    """Rewrite every DS value longer than 16 characters as the closest value that fits (e.g. 0.1 + 0.2)."""
    for element in ds.iterall():
        if element.VR != VR.DS or element.value is None or element.value == "":
            continue
        many = isinstance(element.value, MultiValue | list | tuple)
        values = list(element.value) if many else [element.value]
        if any(len(str(v)) > DS_MAX_CHARS for v in values):
            fitted = [DSfloat(v, auto_format=True) for v in values]
            element.value = fitted if many else fitted[0]
    return ds


def save_dataset(ds: Dataset, path: Path) -> Path:
    """Save a conformant Part 10 file, its decimal strings fitted to 16 characters."""
    fit_decimal_strings(ds).save_as(path, enforce_file_format=True)
    return path
