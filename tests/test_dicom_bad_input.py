"""Bad input from real third-party exports (issue 15): each gives an error or warning that names the file, the
cause and the fix, and one bad patient never hides or stops the others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_cases import SIEMENS_MR, ct_files, edit, export_small, load_dicom_cases, move_to_other_frame, small_case
from external import DICOM3TOOLS, require_data
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from fedrt import cli
from protocols.dicom.importer import UNASSIGNED, import_dicom
from protocols.errors import DicomError
from protocols.openkbp import write_openkbp_case
from protocols.validation import CaseReport, DataValidationError, Finding, format_reports
from runtime.segmentation import read_planning_ct

THIRDPARTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "thirdparty-dicom"
HOW_THIRDPARTY = "put the third-party DICOM samples (see its README.md) in ../shared/data/thirdparty-dicom"


def findings(report: CaseReport, code: str) -> list[Finding]:
    return [f for f in report.findings if f.code == code]


def only_patient(folder: Path, protocol) -> tuple[object, CaseReport]:
    results = [(case, report) for case, report in load_dicom_cases(folder, protocol) if report.of_patient]
    assert len(results) == 1, [r.patient_id for _, r in results]
    return results[0]


def third_party(*parts: str) -> Path:
    return require_data(THIRDPARTY.joinpath(*parts), HOW_THIRDPARTY)


@pytest.fixture
def exported(tmp_path) -> Path:
    return export_small(tmp_path / "synth")


@pytest.mark.parametrize("source", ["pydicom", "dicom3tools"])
def test_an_mr_only_folder_is_a_patient_with_an_error_naming_the_mr_file(source, protocol, tmp_path):
    mr = Path(get_testdata_file("MR_small.dcm")) if source == "pydicom" else require_data(SIEMENS_MR, DICOM3TOOLS)
    shutil.copy(mr, tmp_path / "mr.dcm")
    reports = import_dicom(tmp_path, tmp_path / "out", protocol)
    (report,) = reports
    (error,) = report.errors
    assert report.of_patient and error.code == "no-ct" and error.path == tmp_path / "mr.dcm"
    assert "MR" in error.message and "planning CT" in error.message and "MRI-only" in error.fix
    assert "mr.dcm" in error.message
    assert not (tmp_path / "out").exists()
    assert format_reports(reports).endswith("1 patients: 0 ok, 0 with warnings, 1 unusable")


def test_an_mr_series_beside_the_ct_on_another_frame_is_a_warning_naming_its_file(exported, protocol):
    edit(shutil.copy(get_testdata_file("MR_small.dcm"), exported / "mr.dcm"), PatientID="synth")
    case, report = only_patient(exported, protocol)
    assert case is not None and case.case.mr is None and report.status == "warning"
    (warning,) = report.warnings
    assert warning.code == "mr-not-paired" and warning.path == exported / "mr.dcm"
    assert "mr.dcm" in warning.message and "spatial registration" in warning.fix


def test_the_summary_counts_patients_and_lists_unassigned_files_apart(exported, protocol, tmp_path):
    (exported / "notes.txt").write_text("not DICOM")
    anonymous = tmp_path / "anonymous"
    export_small(anonymous, "other")
    edit(ct_files(anonymous)[0], PatientID=None, PatientName=None)
    shutil.copy(ct_files(anonymous)[0], exported / "anonymous-ct.dcm")
    reports = import_dicom(exported, tmp_path / "out", protocol)
    assert [r.patient_id for r in reports] == ["synth", UNASSIGNED]
    lines = format_reports(reports).splitlines()
    assert lines[0].startswith("synth") and lines[-1] == (
        f"1 patients: 1 ok, 0 with warnings, 0 unusable; {UNASSIGNED}: 2 files")


def test_a_truncated_ct_slice_is_an_error_naming_the_file_not_a_missing_slice(exported, protocol):
    victim = ct_files(exported)[3]
    victim.write_bytes(victim.read_bytes()[:-100])
    case, report = only_patient(exported, protocol)
    (error,) = report.errors
    assert case is None and error.code == "truncated-slice" and error.path == victim
    assert error.message.startswith(f"CT slice {victim.name} is truncated: ") and "re-export" in error.fix


def test_a_truncated_dose_is_a_warning_of_its_patient_who_is_imported_without_dose(exported, protocol):
    dose = exported / "RTDOSE.dcm"
    dose.write_bytes(dose.read_bytes()[:-100])
    case, report = only_patient(exported, protocol)
    assert case is not None and case.case.dose_gy is None
    assert findings(report, "truncated-file")[0].path == dose and findings(report, "no-dose")


def test_ct_files_without_patient_id_are_named_as_the_cause_when_segmenting(exported, protocol):
    for path in ct_files(exported):
        edit(path, PatientID=None, PatientName=None)
    with pytest.raises(DicomError, match=r"8 DICOM files have no PatientID or PatientName \(e\.g\. .*CT\.0001\.dcm\); "
                                         "re-export the CT with the patient's pseudonymised ID"):
        read_planning_ct(exported, protocol)


def test_rt_utils_oblique_ct_without_patient_id_and_with_one_gives_the_real_causes(protocol, tmp_path):
    oriented = third_party("rt-utils", "oriented_data")
    with pytest.raises(DicomError, match="3 DICOM files have no PatientID"):
        read_planning_ct(oriented, protocol)
    shutil.copytree(oriented, tmp_path / "ct")
    for path in (tmp_path / "ct").iterdir():
        edit(path, PatientID="oblique")
    with pytest.raises(DataValidationError, match=r"non-axial: CT \(0\.dcm \.\. 2\.dcm, 3 files\): planes are not"):
        read_planning_ct(tmp_path / "ct", protocol)


def test_a_structure_set_referencing_an_absent_series_warns_which_ct_was_used(exported, protocol):
    ds = pydicom.dcmread(exported / "RTSTRUCT.dcm")
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    absent, series.SeriesInstanceUID = series.SeriesInstanceUID, generate_uid()
    ds.save_as(exported / "RTSTRUCT.dcm")
    case, report = only_patient(exported, protocol)
    (warning,) = findings(report, "referenced-series-absent")
    assert series.SeriesInstanceUID in warning.message and f"used series {absent} (8 slices" in warning.message
    np.testing.assert_array_equal(case.case.structures["PTV70"], small_case().structures["PTV70"])


def test_a_newer_structure_set_on_another_frame_of_reference_is_skipped_for_the_matching_one(exported, protocol):
    ds = pydicom.dcmread(exported / "RTSTRUCT.dcm")
    move_to_other_frame(ds)
    ds.SOPInstanceUID, ds.StructureSetDate = generate_uid(), "29991231"
    ds.save_as(exported / "RTSTRUCT-newer.dcm")
    case, report = only_patient(exported, protocol)
    assert case is not None and report.usable
    (warning,) = findings(report, "several-structure-sets")
    assert "imported RTSTRUCT.dcm, skipped RTSTRUCT-newer.dcm (its frame of reference differs" in warning.message


def test_rt_utils_mock_data_imports_the_structure_set_on_the_cts_frame_and_says_what_is_missing(protocol):
    folder = third_party("rt-utils", "mock_data")
    _, report = only_patient(folder, protocol)
    (choice,) = findings(report, "several-structure-sets")
    assert "imported invalid_reference_rt.dcm" in choice.message
    assert "rt.dcm (its frame of reference differs from its CT's)" in choice.message
    assert not findings(report, "frame-mismatch")
    (incomplete,) = findings(report, "incomplete-ct")
    assert "references 5 images" in incomplete.message and "3 of them are not in the folder" in incomplete.message


def test_dicompyler_breast_patient_with_one_ct_slice_of_98_says_97_are_missing(protocol):
    _, report = only_patient(third_party("dicompyler-core"), protocol)
    (incomplete,) = findings(report, "incomplete-ct")
    assert "references 98 images" in incomplete.message and "97 of them are not in the folder" in incomplete.message
    assert "complete series" in incomplete.fix


def test_a_failing_command_says_error_once(protocol, tmp_path, capsys):
    write_openkbp_case(small_case(), tmp_path / "patient")
    relative_dose = get_testdata_file("rtdose.dcm")
    (tmp_path / "empty").mkdir()
    assert cli.main(["plan", str(tmp_path / "patient"), "--target-dose", relative_dose, "--out",
                     str(tmp_path / "plan")]) == 2
    assert cli.main(["export-dicom", str(tmp_path / "empty"), str(tmp_path / "dicom")]) == 2
    assert cli.main(["export-dicom", str(tmp_path / "absent"), str(tmp_path / "dicom")]) == 2
    err = capsys.readouterr().err
    assert "fedrt plan: error: dose-units: DoseUnits is 'RELATIVE'" in err
    assert "fedrt export-dicom: error: patient empty" in err
    assert "patient folder " + str(tmp_path / "absent") + " does not exist" in err
    assert "error: error:" not in err
