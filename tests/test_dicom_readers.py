"""DICOM readers: exact reads of what we write, the geometry defects of the primer, references and samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_cases import ct_files, dice, edit, export_small, load_dicom_cases, move_to_other_frame, small_case
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from protocols.dicom.export import centred_grid, write_rtdose
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.header import StudyContext
from protocols.dicom.rtdose import read_rtdose
from protocols.dicom.rtplan import read_rtplan
from protocols.dicom.rtstruct import read_structure_set
from protocols.validation import CaseReport, DataValidationError, Policy


def read_one(folder: Path, protocol, policy=Policy.IGNORE):
    results = load_dicom_cases(folder, protocol, policy=policy)
    assert len(results) == 1, [r.patient_id for _, r in results]
    return results[0]


def codes(report: CaseReport, severity: str = "error") -> set[str]:
    return {f.code for f in report.findings if f.severity == severity}


@pytest.fixture
def exported(tmp_path) -> Path:
    return export_small(tmp_path / "synth")


def test_written_case_reads_back_on_its_ct_grid(exported, protocol):
    dicom_case, report = read_one(exported, protocol)
    original = small_case()
    assert report.status == "ok", report.findings
    case = dicom_case.case
    np.testing.assert_array_equal(case.ct_hu, original.ct_hu)
    assert case.spacing_mm == pytest.approx((2.0, 2.0, 3.0))
    for name in ("PTV70", "SpinalCord"):
        np.testing.assert_array_equal(case.structures[name], original.structures[name])
    assert np.abs(case.dose_gy - original.dose_gy).max() < 0.01
    assert dicom_case.grid.same_as(centred_grid(original.shape, original.spacing_mm))


def test_a_missing_slice_is_an_error_naming_the_series_and_fix(exported, protocol):
    ct_files(exported)[4].unlink()
    case, report = read_one(exported, protocol)
    assert case is None and "missing-slice" in codes(report)
    finding = report.errors[0]
    assert finding.path == exported and "complete series" in finding.fix


def test_duplicate_positions_are_an_error(exported, protocol):
    files = ct_files(exported)
    position = pydicom.dcmread(files[2]).ImagePositionPatient
    edit(files[3], ImagePositionPatient=position, SOPInstanceUID=generate_uid())
    assert "duplicate-slice" in codes(read_one(exported, protocol)[1])


def test_an_identical_copy_of_a_slice_is_only_noted(exported, protocol):
    shutil.copy(ct_files(exported)[2], exported / "copy-of-slice.dcm")
    case, report = read_one(exported, protocol)
    assert case is not None and "duplicate-file" in codes(report, "note")


def test_gantry_tilt_is_an_error(exported, protocol):
    for k, path in enumerate(ct_files(exported)):
        x, y, z = pydicom.dcmread(path).ImagePositionPatient
        edit(path, ImagePositionPatient=[x, y + 0.5 * k, z])
    case, report = read_one(exported, protocol)
    assert case is None and "gantry-tilt" in codes(report)


def test_non_axial_orientation_is_an_error(exported, protocol):
    for path in ct_files(exported):
        edit(path, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    case, report = read_one(exported, protocol)
    assert case is None and "non-axial" in codes(report)
    assert "axial" in report.errors[0].fix


def test_slices_differing_in_spacing_are_an_error(exported, protocol):
    edit(ct_files(exported)[5], PixelSpacing=[2.5, 2.5])
    assert "inconsistent-series" in codes(read_one(exported, protocol)[1])


def test_uneven_slice_spacing_is_resampled_with_a_warning(exported, protocol):
    path = ct_files(exported)[3]
    x, y, z = pydicom.dcmread(path).ImagePositionPatient
    edit(path, ImagePositionPatient=[x, y, z + 1.0])
    case, report = read_one(exported, protocol)
    assert case is not None and "uneven-spacing" in codes(report, "warning")
    assert case.case.shape == (24, 28, 8) and case.grid.spacing_mm[2] == pytest.approx(3.0)


def test_a_mirrored_orientation_reads_into_the_same_case_axes(exported, protocol):
    reference, _ = read_one(exported, protocol)
    for path in ct_files(exported):
        ds = pydicom.dcmread(path)
        x, y, z = ds.ImagePositionPatient
        columns, dx = ds.Columns, float(ds.PixelSpacing[1])
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [x + (columns - 1) * dx, y, z]
        ds.save_as(path)
    flipped, report = read_one(exported, protocol)
    assert report.usable
    np.testing.assert_array_equal(flipped.case.ct_hu, reference.case.ct_hu)
    assert flipped.grid.same_as(reference.grid)
    np.testing.assert_array_equal(flipped.case.structures["PTV70"], reference.case.structures["PTV70"])


def test_a_second_ct_series_in_the_folder_does_not_confuse_the_reader(exported, protocol):
    series = generate_uid()
    for path in ct_files(exported):
        copy = exported / f"other-{path.name}"
        shutil.copy(path, copy)
        edit(copy, SeriesInstanceUID=series, SOPInstanceUID=generate_uid(), PixelSpacing=[1.0, 1.0])
    case, report = read_one(exported, protocol)
    assert report.status == "ok" and case.case.spacing_mm[0] == pytest.approx(2.0)


def test_structure_set_without_references_falls_back_to_the_only_ct(exported, protocol):
    ds = pydicom.dcmread(exported / "RTSTRUCT.dcm")
    del ds.ReferencedFrameOfReferenceSequence
    del ds.FrameOfReferenceUID
    for roi in ds.StructureSetROISequence:
        del roi.ReferencedFrameOfReferenceUID
    for item in ds.ROIContourSequence:
        for contour in item.ContourSequence:
            del contour.ContourImageSequence
    ds.save_as(exported / "RTSTRUCT.dcm")
    case, report = read_one(exported, protocol)
    assert "assumed-frame" in codes(report, "warning")
    np.testing.assert_array_equal(case.case.structures["PTV70"], small_case().structures["PTV70"])


def test_structure_set_on_another_frame_of_reference_is_an_error(exported, protocol):
    ds = pydicom.dcmread(exported / "RTSTRUCT.dcm")
    move_to_other_frame(ds)
    ds.save_as(exported / "RTSTRUCT.dcm")
    case, report = read_one(exported, protocol)
    assert case is None and "frame-mismatch" in codes(report)


def test_contours_off_the_slice_planes_are_put_on_the_nearest_slice_and_reported(exported, protocol):
    ds = pydicom.dcmread(exported / "RTSTRUCT.dcm")
    for item in ds.ROIContourSequence:
        for contour in item.ContourSequence:
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            points[:, 2] += 1.0
            contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    ds.save_as(exported / "RTSTRUCT.dcm")
    case, report = read_one(exported, protocol)
    assert "contour-between-slices" in codes(report, "warning")
    assert dice(case.case.structures["PTV70"], small_case().structures["PTV70"]) == 1.0


def test_dose_on_its_own_coarser_grid_is_resampled_trilinearly_onto_the_ct(exported, protocol, tmp_path):
    ct_grid = centred_grid((24, 28, 8), (2.0, 2.0, 3.0))
    dose_grid = VolumeGrid((12, 14, 4), (3.5, 3.5, 4.5), (ct_grid.origin_mm[0] - 1, ct_grid.origin_mm[1] - 2,
                                                          ct_grid.origin_mm[2] + 1))

    def linear(points: np.ndarray) -> np.ndarray:
        return 20 + 0.3 * points[..., 0] - 0.2 * points[..., 1] + 0.5 * points[..., 2]

    dose_points = dose_grid.to_mm(np.moveaxis(np.indices(dose_grid.shape), 0, -1))
    ds = pydicom.dcmread(exported / "RTDOSE.dcm")
    context = StudyContext(ds.PatientID, study_uid=ds.StudyInstanceUID,
                           frame_of_reference_uid=ds.FrameOfReferenceUID)
    write_rtdose(linear(dose_points), dose_grid, exported / "RTDOSE.dcm", context, generate_uid())
    case, report = read_one(exported, protocol)
    assert report.usable
    ct_points = ct_grid.to_mm(np.moveaxis(np.indices(ct_grid.shape), 0, -1))
    index = dose_grid.to_index(ct_points)
    inside = np.all((index >= 0) & (index <= np.array(dose_grid.shape) - 1), axis=-1)
    assert inside.sum() > 1000 and (~inside).sum() > 0
    np.testing.assert_allclose(case.case.dose_gy[inside], linear(ct_points)[inside], atol=0.01)
    assert not case.case.dose_gy[~inside].any()
    assert not (case.case.possible_dose_mask & ~inside).any()


def test_absolute_grid_frame_offsets_read_like_relative_ones(exported, protocol):
    reference, _ = read_one(exported, protocol)
    ds = pydicom.dcmread(exported / "RTDOSE.dcm")
    z0 = float(ds.ImagePositionPatient[2])
    ds.GridFrameOffsetVector = [z0 + float(v) for v in ds.GridFrameOffsetVector]
    ds.save_as(exported / "RTDOSE.dcm")
    case, _ = read_one(exported, protocol)
    np.testing.assert_array_equal(case.case.dose_gy, reference.case.dose_gy)


def test_relative_dose_is_rejected_and_the_case_kept_without_dose(exported, protocol):
    edit(exported / "RTDOSE.dcm", DoseUnits="RELATIVE")
    case, report = read_one(exported, protocol)
    assert "dose-units" in codes(report) and case.case.dose_gy is None


def test_under_the_raise_policy_a_bad_patient_raises_with_file_and_fix(exported, protocol):
    ct_files(exported)[4].unlink()
    with pytest.raises(DataValidationError, match="missing-slice") as info:
        read_one(exported, protocol, Policy.RAISE)
    assert "synth" in str(info.value) and "Fix:" in str(info.value)


def test_pydicom_sample_structure_set_is_read_and_without_its_ct_rejected_clearly(protocol, tmp_path):
    path = Path(get_testdata_file("rtstruct.dcm"))
    report = CaseReport("sample", path)
    structure_set = read_structure_set(pydicom.dcmread(path, force=True), path, report)
    assert [r.name for r in structure_set.rois] == ["patient", "Isocenter 1", "Isocenter 2"]
    assert structure_set.rois[0].interpreted_type == "EXTERNAL" and len(structure_set.rois[0].contours) == 3
    assert "skipped-contour" in codes(report, "note")
    shutil.copy(path, tmp_path / "rtstruct.dcm")
    case, report = read_one(tmp_path, protocol)
    assert case is None and "no-ct" in codes(report)
    assert report.errors[0].path == tmp_path / "rtstruct.dcm" and "CT series" in report.errors[0].fix


def test_pydicom_sample_relative_dose_is_rejected_with_its_units(tmp_path):
    path = Path(get_testdata_file("rtdose.dcm"))
    report = CaseReport("sample", path)
    assert read_rtdose(pydicom.dcmread(path), path, report) is None
    (finding,) = report.errors
    assert finding.code == "dose-units" and "RELATIVE" in finding.message and finding.path == path
    assert "GY" in finding.fix


def test_pydicom_sample_plan_gives_prescription_and_beams():
    path = Path(get_testdata_file("rtplan.dcm"))
    report = CaseReport("sample", path)
    plan = read_rtplan(pydicom.dcmread(path), path, report)
    assert not report.findings
    assert plan.label == "Plan1" and plan.fractions == 30
    assert plan.target_prescriptions_gy == pytest.approx([30.826203])
    (beam,) = plan.beams
    assert (beam.name, beam.beam_type, beam.radiation_type, beam.energy_mv) == ("Field 1", "STATIC", "PHOTON", 6.0)
    assert beam.gantry_angles_deg == [0.0] and beam.meterset_mu == pytest.approx(116.0036697)
    assert beam.control_points == 2 and beam.isocenter_mm == pytest.approx([235.7112, 244.1354, -724.9782], abs=1e-3)


def test_a_plan_linked_to_the_structure_set_is_summarised_and_checked(exported, protocol):
    plan = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    structure_set = pydicom.dcmread(exported / "RTSTRUCT.dcm")
    plan.PatientID = structure_set.PatientID
    plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID = structure_set.SOPInstanceUID
    plan.save_as(exported / "plan.dcm")
    case, report = read_one(exported, protocol)
    assert case.plan.fractions == 30
    assert {"fractions", "prescription"} <= codes(report, "warning")
    assert any(f.code == "plan" and "Field 1" in f.message for f in report.findings)
