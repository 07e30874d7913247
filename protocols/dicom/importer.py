"""Import a folder of DICOM RT exports (many patients, nested folders, any file names) as a protocol dataset.

On-disk format: one, the OpenKBP CSV layout on the protocol grid (128^3 for hn-openkbp), because that is
what training reads (``protocols.dataset.ProtocolDataset``). The patient is resampled onto the protocol's
shape and spacing: centred in-plane on the body and along the slices on the targets, CT and dose trilinear,
masks by linear interpolation thresholded at 0.5; a patient already on that grid is written unchanged. An MR
paired with the CT (same frame, or a rigid spatial registration: :mod:`protocols.dicom.pairing`) is resampled from
its own grid onto the same grid, trilinear, and written as ``mr.csv``.
``fmt="fedrt"`` writes ``NAME.csv.gz`` plus ``dicom_import.json`` (source UIDs, the grid's position in
patient space, the name match, the plan summary and the findings), so ``fedrt export-dicom`` can put the
arrays back in place; ``fmt="openkbp"`` writes exactly the challenge's files (plain ``NAME.csv``).
Each patient is read, resampled and written on its own: one bad patient never stops the others, and a
patient folder appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from protocols.case import Case
from protocols.dicom import FORMATS
from protocols.dicom.attributes import MALFORMED, text
from protocols.dicom.ct import CT_IMAGE_STORAGE
from protocols.dicom.geometry import AXIS_DIRECTIONS, VolumeGrid, resample
from protocols.dicom.mr import MR_STORAGE
from protocols.dicom.names import build_name_table
from protocols.dicom.registration import REGISTRATION_STORAGE
from protocols.dicom.rtdose import RT_DOSE_STORAGE
from protocols.dicom.rtplan import RT_PLAN_STORAGE
from protocols.dicom.rtstruct import RT_STRUCTURE_SET_STORAGE
from protocols.dicom.series import Item
from protocols.dicom.study import FIX_DAMAGED, NOT_USED, DicomCase, PatientFiles, read_patient, unused_object
from protocols.errors import ConfigError, DataError, DataNotFoundError, DicomError
from protocols.openkbp import write_openkbp_case
from protocols.protocol import Protocol, load_protocol
from protocols.validation import CaseReport, DataValidationError, Policy, Severity, apply_policy

log = logging.getLogger(__name__)
SIDECAR = "dicom_import.json"
UNASSIGNED = "(unassigned files)"
NO_PATIENT_ID = "no-patient-id"  # the finding of a CT or RT file without PatientID or PatientName
UNDEFINED_LENGTH = 0xFFFFFFFF  # a sequence or item whose end is a delimiter, not a byte count
DEFER_BYTES = 64 * 1024  # larger values (pixel data, long contours) are read from the file when used
KINDS = {CT_IMAGE_STORAGE: "CT", RT_STRUCTURE_SET_STORAGE: "RTSTRUCT", RT_DOSE_STORAGE: "RTDOSE",
         RT_PLAN_STORAGE: "RTPLAN", **dict.fromkeys(MR_STORAGE, "MR"), **dict.fromkeys(REGISTRATION_STORAGE, "REG")}
BESIDE_CT = ("MR", "REG")  # kinds a patient may have beside the CT: without a patient they are only noted


class TruncatedFileError(DicomError):
    """A DICOM file that ends inside one of its elements (a copy cut short); ``detail`` says where."""

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"the file is truncated: {detail}")


def read_dicom_header(path: Path, stop_before_pixels: bool = False) -> Dataset | None:
    """A DICOM file's dataset (large values deferred; with ``stop_before_pixels`` all before the pixel data); None
    for a file that is not DICOM at all.

    Files without the Part 10 preamble (as some exports and pydicom's own samples) are read too, when
    they hold a SOP Class UID. A file cut short raises :class:`TruncatedFileError`; anything else malformed raises
    one of ``attributes.MALFORMED``.
    """
    try:
        return _complete(path, pydicom.dcmread(path, defer_size=DEFER_BYTES, stop_before_pixels=stop_before_pixels))
    except InvalidDicomError:
        pass
    try:
        with warnings.catch_warnings():  # pydicom's guesses about a file that may not be DICOM at all
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES, stop_before_pixels=stop_before_pixels, force=True)
    except MALFORMED:
        return None
    return _complete(path, ds) if text(ds, "SOPClassUID") else None


def _complete(path: Path, ds: Dataset) -> Dataset:
    """``ds`` if no top-level element claims bytes past the end of the file; pydicom reads a file cut inside its
    last element without a word, so a truncated copy is caught here.
    """
    size = path.stat().st_size
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset yields its elements, decoded)
        element = ds.get_item(tag)
        if isinstance(element, RawDataElement) and element.length != UNDEFINED_LENGTH \
                and element.value_tell + element.length > size:
            raise TruncatedFileError(f"element {element.tag} needs {element.length} bytes from byte "
                                     f"{element.value_tell}, but the file ends at byte {size}")
    return ds


def _read_header(path: Path) -> tuple[Dataset | None, str]:
    """The file's dataset and, for a file cut inside its pixel data, its header and what is cut (else "")."""
    try:
        return read_dicom_header(path), ""
    except TruncatedFileError as exc:
        return read_dicom_header(path, stop_before_pixels=True), exc.detail


def scan_folder(src: Path) -> tuple[dict[str, PatientFiles], CaseReport]:
    """Group every DICOM file under ``src`` by patient and kind (objects the import does not use too, so a patient
    with only those is still reported); the report lists the files of no patient.
    """
    skipped = CaseReport(UNASSIGNED, src, of_patient=False)
    patients: dict[str, PatientFiles] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        try:
            ds, truncated = _read_header(path)
            if ds is None:
                skipped.add(Severity.NOTE, "not-dicom", "not a DICOM file, ignored", path)
                continue
            kind = KINDS.get(text(ds, "SOPClassUID"), "")
            patient_id = text(ds, "PatientID") or text(ds, "PatientName")
            if not patient_id:
                if kind and kind not in BESIDE_CT:
                    skipped.add(Severity.WARNING, NO_PATIENT_ID, f"{kind} file without PatientID or PatientName",
                                path, "re-export the file with the patient's (pseudonymised) ID")
                else:
                    skipped.add(Severity.NOTE, NOT_USED, f"{unused_object(ds)} without PatientID, not "
                                "used by the import", path)
                continue
            files = patients.setdefault(patient_id, PatientFiles(patient_id))
            if truncated:
                files.truncated[path] = truncated
            if kind in ("CT", "MR"):  # a truncated slice too: its header marks its series as damaged
                series = files.ct_series if kind == "CT" else files.mr_series
                series.setdefault(text(ds, "SeriesInstanceUID"), []).append((path, ds))
            elif not truncated:
                {"RTSTRUCT": files.structure_sets, "RTDOSE": files.doses, "RTPLAN": files.plans,
                 "REG": files.registrations, "": files.unused}[kind].append((path, ds))
        except MALFORMED as exc:
            skipped.add(Severity.WARNING, "unreadable", f"DICOM file cannot be parsed ({exc})", path, FIX_DAMAGED)
    return patients, skipped


def single_series(src: Path, modality: str, purpose: str) -> tuple[str, str, list[Item]]:
    """The one ``modality`` ("CT" or "MR") image series in the folder ``src``: its patient, series UID and slices;
    a clear error when there is none or more than one (``purpose`` says what the folder is for, in the fix).
    """
    patients, skipped = scan_folder(src)
    series = [(pid, uid, items) for pid, files in patients.items()
              for uid, items in (files.ct_series if modality == "CT" else files.mr_series).items()]
    anonymous = [f.path for f in skipped.findings if f.code == NO_PATIENT_ID]
    if not series and anonymous:
        raise DicomError(f"{src}: no {modality} series of a patient: {len(anonymous)} DICOM files have no PatientID "
                         f"or PatientName (e.g. {anonymous[0]}); re-export the {modality} with the patient's "
                         "pseudonymised ID")
    if len(series) != 1:
        found = ", ".join(f"{pid}/{uid}" for pid, uid, _ in series) or "none"
        raise DicomError(f"{src}: expected exactly one {modality} series, found {len(series)} ({found}); give a "
                         f"folder holding {purpose}")
    return series[0]


def folder_name(patient_id: str, taken: set[str]) -> str:
    """A safe folder name for a patient ID (no path separators or dots at the start), unique in ``taken``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", patient_id).strip("._") or "patient"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def read_dicom_folder(src: Path | str, protocol: Protocol | str, name_overrides: Path | str | None = None,
                      ) -> Iterator[tuple[DicomCase | None, CaseReport]]:
    """Each patient under ``src`` as a case on its own CT grid with its report, before any policy is applied.

    The last report (patient ``(unassigned files)``) lists files that belong to no patient, if any.
    """
    src, protocol = Path(src), _protocol(protocol)
    if not src.is_dir():
        raise DataNotFoundError(f"DICOM folder {src} does not exist; give the folder holding the export")
    table = build_name_table(protocol, name_overrides)
    patients, skipped = scan_folder(src)
    taken: set[str] = set()
    for patient_id, files in patients.items():
        report = CaseReport(folder_name(patient_id, taken), files.folder)
        yield _read_guarded(files, protocol, table, report), report
    if skipped.findings:
        yield None, skipped


def _read_guarded(files: PatientFiles, protocol: Protocol, table, report: CaseReport) -> DicomCase | None:
    try:
        return read_patient(files, protocol, table, report)
    except MALFORMED as exc:  # a defect no reader check anticipated: this patient fails, the others go on
        log.exception("patient %s: unexpected failure", files.patient_id)
        report.add(Severity.ERROR, "unexpected-defect", f"unexpected defect ({type(exc).__name__}: {exc})", None,
                   "check the export with dciodvfy; please report this file to the fedrt developers")
        return None


def _apply(report: CaseReport, policy: Policy | str) -> None:
    """The validation policy per patient: under RAISE a patient with warnings is rejected, not the import."""
    try:
        apply_policy(report, policy)
    except DataValidationError:
        if report.usable:
            report.add(Severity.ERROR, "rejected-by-policy", "warnings are errors under the raise policy",
                       report.path, "fix the warnings above, or import with policy warn")


def protocol_grid(dicom_case: DicomCase, protocol: Protocol) -> VolumeGrid:
    """Where the protocol's grid sits on this patient: centred in-plane on the body, along z on the targets.

    An axis whose spacing equals the CT's is aligned with the CT's voxels (no interpolation along it); a
    CT already of the protocol's shape and spacing is kept as it is.
    """
    native, shape, spacing = dicom_case.grid, protocol.grid.shape, protocol.grid.spacing_mm
    if native.shape == tuple(shape) and np.allclose(native.spacing_mm, spacing, atol=1e-3):
        return native
    body = dicom_case.body if dicom_case.body.any() else np.ones(native.shape, dtype=bool)
    targets = np.zeros(native.shape, dtype=bool)
    for name in protocol.targets:
        targets |= dicom_case.case.mask(name)
    centre = _bbox_centre(body)
    centre[2] = _bbox_centre(targets if targets.any() else body)[2]
    half = (np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
    origin_index = native.to_index(native.to_mm(centre) - half @ AXIS_DIRECTIONS)
    same = np.isclose(native.spacing_mm, spacing, atol=1e-3)
    origin_index[same] = np.round(origin_index[same])
    origin = native.to_mm(origin_index)
    return VolumeGrid(tuple(shape), tuple(float(s) for s in spacing), tuple(float(v) for v in origin))


def _bbox_centre(mask: np.ndarray) -> np.ndarray:
    found = np.argwhere(mask)
    return (found.min(axis=0) + found.max(axis=0)) / 2.0


def to_protocol_grid(dicom_case: DicomCase, protocol: Protocol, report: CaseReport,
                     grid: VolumeGrid | None = None) -> tuple[Case, VolumeGrid]:
    """The case resampled onto the protocol grid (or onto ``grid``); targets that lose volume at the edges are
    reported.
    """
    case, native = dicom_case.case, dicom_case.grid
    grid = grid or protocol_grid(dicom_case, protocol)
    if grid is native:
        return case, grid

    def mask(array: np.ndarray) -> np.ndarray:
        return resample(array.astype(np.float32), native, grid, order=1, cval=0.0) >= 0.5

    structures = {name: mask(m) for name, m in case.structures.items()}
    for name in protocol.targets:
        if name in case.structures and case.structures[name].any():
            found = np.argwhere(case.structures[name])
            corners = grid.to_index(native.to_mm(np.stack([found.min(axis=0), found.max(axis=0)])))
            if np.any(corners < -0.5) or np.any(corners > np.asarray(grid.shape) - 0.5):
                report.add(Severity.WARNING, "cropped", f"{name} reaches beyond the "
                           f"{'x'.join(map(str, grid.shape))} protocol grid and was cut", report.path,
                           "check the patient fits the protocol's field of view")
    resampled = replace(
        case,
        ct_hu=resample(case.ct_hu, native, grid, order=1, cval=-1000.0).astype(np.float32),
        spacing_mm=grid.spacing_mm,
        structures=structures,
        possible_dose_mask=mask(case.possible_dose_mask) if case.possible_dose_mask is not None else None,
        dose_gy=None if case.dose_gy is None else resample(case.dose_gy, native, grid, order=1).astype(np.float32),
        mr=None if dicom_case.mr is None else dicom_case.mr.on_grid(grid),
    )
    return resampled, grid


def import_dicom(src: Path | str, dst: Path | str, protocol: Protocol | str, fmt: str = "fedrt",
                 name_overrides: Path | str | None = None, policy: Policy | str = Policy.WARN) -> list[CaseReport]:
    """Convert a folder of DICOM RT exports into a protocol dataset under ``dst``, one folder per patient.

    Returns one report per patient (plus one for the files of no patient, if any); a patient whose report has errors
    (or, under the raise policy, warnings) is not written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    protocol, dst = _protocol(protocol), Path(dst)
    reports = []
    for dicom_case, report in read_dicom_folder(src, protocol, name_overrides):
        reports.append(report)
        if dicom_case is not None and report.usable:
            case, grid = to_protocol_grid(dicom_case, protocol, report)
        _apply(report, policy)
        if dicom_case is None or not report.usable:
            continue
        extra = {SIDECAR: _sidecar(dicom_case, grid, report)} if fmt == "fedrt" else None
        try:
            write_openkbp_case(case, dst / report.patient_id, compress=fmt == "fedrt", extra_files=extra)
        except OSError as exc:
            report.add(Severity.ERROR, "write-failed", f"cannot write the patient ({exc})", dst / report.patient_id,
                       "check the destination is writable and has space")
    return reports


def _sidecar(dicom_case: DicomCase, grid: VolumeGrid, report: CaseReport) -> str:
    return json.dumps({
        "patient_id": report.patient_id,
        "source": str(dicom_case.case.source),
        "uids": dicom_case.uids,
        "grid": {"shape": list(grid.shape), "spacing_mm": list(grid.spacing_mm), "origin_mm": list(grid.origin_mm),
                 "axes": ["anterior->posterior", "right->left", "superior->inferior"]},
        "names": dicom_case.names.as_dict(),
        "plan": dicom_case.plan.as_dict() if dicom_case.plan else None,
        "findings": [{"severity": f.severity.value, "code": f.code, "message": f.message,
                      "path": str(f.path or ""), "fix": f.fix} for f in report.findings],
    }, indent=2)


def read_sidecar_grid(patient_dir: Path) -> VolumeGrid | None:
    """The patient-space grid recorded by a fedrt-format import, if the folder has one."""
    path = Path(patient_dir) / SIDECAR
    if not path.is_file():
        return None
    try:
        grid = json.loads(path.read_text())["grid"]
        return VolumeGrid(tuple(int(v) for v in grid["shape"]), tuple(float(v) for v in grid["spacing_mm"]),
                          tuple(float(v) for v in grid["origin_mm"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed import record ({exc}); delete it to export on a centred grid") from exc


def _protocol(protocol: Protocol | str) -> Protocol:
    return protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
