"""MR series beside the planning CT (issue 16): paired on the CT's frame or through a rigid Spatial Registration,
resampled onto the CT's grids, refused with the reason otherwise; real MR files read or refused clearly.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_cases import SIEMENS_MR, edit, write_deformable_registration, write_mr_series, write_registration
from external import DICOM3TOOLS, require_data
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from scipy import ndimage

from fedrt import cli
from protocols.case import Case
from protocols.dicom.export import centred_grid, export_case
from protocols.dicom.geometry import VolumeGrid, resample_rigid
from protocols.dicom.header import StudyContext
from protocols.dicom.importer import import_dicom, read_dicom_folder
from protocols.dicom.mr import read_mr_series
from protocols.openkbp import read_openkbp_case
from protocols.validation import CaseReport, Finding

SHAPE, SPACING = (32, 32, 12), (2.0, 2.0, 3.0)
BODY = (slice(3, 29), slice(3, 29), slice(0, 12))
CUBE = (slice(8, 14), slice(18, 24), slice(3, 7))  # off-centre in both axes: a wrong rotation or shift moves it
CT_GRID = centred_grid(SHAPE, SPACING)  # where export_case puts the CT
MR_BODY, MR_CUBE = 300.0, 1000.0
BRIGHT = (MR_BODY + MR_CUBE) / 2
# the registration of the tests: MR-frame points -> CT-frame points, a 90 deg rotation about z then +10 mm in x
IDENTITY = np.eye(4)
CT_FROM_MR = np.array([[0.0, -1.0, 0.0, 10.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def ct_case(patient_id: str = "mrpat") -> Case:
    """A body box with a dense cube (the landmark the MR must overlay), a PTV70 and a dose."""
    ct = np.full(SHAPE, -1000.0, np.float32)
    ct[BODY] = 40.0
    ct[CUBE] = 700.0
    ptv = np.zeros(SHAPE, bool)
    ptv[16:22, 8:14, 4:8] = True
    dose = np.where(ct > -500, 50.0, 0.0).astype(np.float32)
    dose[ptv] = 70.0
    return Case(patient_id, ct, SPACING, {"PTV70": ptv}, ct > -500, dose)


def box_mm(grid: VolumeGrid, region: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The LPS bounds (low, high) of a block of voxels, to their outer faces."""
    corners = grid.to_mm(np.array([[s.start - 0.5 for s in region], [s.stop - 0.5 for s in region]]))
    return corners.min(axis=0), corners.max(axis=0)


def synthetic_mr(grid: VolumeGrid, ct_from_mr: np.ndarray) -> np.ndarray:
    """An MR on ``grid`` (MR frame) of the same anatomy: the CT's body and cube, wherever the transform puts them."""
    index = np.indices(grid.shape).reshape(3, -1).T
    points = grid.to_mm(index) @ ct_from_mr[:3, :3].T + ct_from_mr[:3, 3]

    def inside(region: tuple[slice, ...]) -> np.ndarray:
        low, high = box_mm(CT_GRID, region)
        return np.all((points >= low) & (points <= high), axis=1)

    values = np.where(inside(CUBE), MR_CUBE, np.where(inside(BODY), MR_BODY, 0.0))
    return values.reshape(grid.shape).astype(np.float32)


def mr_grid(ct_from_mr: np.ndarray, shape=(30, 30, 14), spacing=(2.5, 2.5, 3.5)) -> VolumeGrid:
    """An MR grid of its own spacing, centred (in the MR frame) on the CT's centre, larger than the CT."""
    centre = (np.linalg.inv(ct_from_mr) @ [0.0, 0.0, 0.0, 1.0])[:3]
    grid = centred_grid(shape, spacing)
    return VolumeGrid(grid.shape, grid.spacing_mm, tuple(float(v) for v in np.asarray(grid.origin_mm) + centre))


def study(tmp_path: Path) -> tuple[Path, StudyContext]:
    """The CT study (CT, RTSTRUCT, RTDOSE) in ``tmp_path/dicom/ct`` and its patient, study and frame."""
    context = StudyContext("mrpat")
    export_case(ct_case(), tmp_path / "dicom" / "ct", context=context)
    return tmp_path / "dicom", context


def add_mr(folder: Path, context: StudyContext, ct_from_mr: np.ndarray = IDENTITY, **grid) -> list[Path]:
    """An MR series of the phantom in ``context``'s frame, related to the CT's by ``ct_from_mr``."""
    where = mr_grid(ct_from_mr, **grid)
    return write_mr_series(folder, synthetic_mr(where, ct_from_mr), where, context)


def read_one(src: Path, protocol) -> tuple[object, CaseReport]:
    ((dicom_case, report),) = list(read_dicom_folder(src, protocol))
    return dicom_case, report


def coded(report: CaseReport, code: str) -> list[Finding]:
    return [f for f in report.findings if f.code == code]


def centre_mm(mask: np.ndarray, grid: VolumeGrid) -> np.ndarray:
    return grid.to_mm(np.argwhere(mask).mean(axis=0))


def assert_on_the_cube(mr: np.ndarray, ct_hu: np.ndarray, grid: VolumeGrid) -> None:
    """The MR's bright cube overlays the CT's dense one: centres within 1 mm, no bright voxel more than one voxel off
    the cube, and at least a third of the cube bright (the MR's coarser voxels shrink it at the threshold).
    """
    bright, dense = mr > BRIGHT, ct_hu > 370.0
    assert dense.sum() == 6 * 6 * 4 and bright.sum() >= dense.sum() / 3
    assert np.linalg.norm(centre_mm(bright, grid) - centre_mm(dense, grid)) < 1.0
    assert not (bright & ~ndimage.binary_dilation(dense, np.ones((3, 3, 3)))).any()


def test_an_mr_on_the_cts_frame_is_paired_and_its_cube_lands_on_the_cts(protocol, tmp_path):
    src, context = study(tmp_path)
    first = add_mr(src / "mr", context)[0]
    dicom_case, report = read_one(src, protocol)
    mr = dicom_case.case.mr
    assert mr is not None and mr.shape == SHAPE and mr.dtype == np.float32
    assert report.status == "ok", [f.labelled() for f in report.findings]
    (note,) = coded(report, "mr-paired")
    assert note.path == first and "same frame of reference" in note.message and "t1_se_tra" in note.message
    assert_on_the_cube(mr, dicom_case.case.ct_hu, CT_GRID)
    body_only = (dicom_case.case.ct_hu > 0) & (dicom_case.case.ct_hu < 100)
    assert np.median(mr[body_only]) == pytest.approx(MR_BODY, abs=0.5)  # stored * 0.5 + 10: the rescale applied
    assert np.median(mr[dicom_case.case.ct_hu < -500]) == 0.0 and mr[0, 0].max() == 0.0  # air: no signal


@pytest.mark.parametrize("direction", ["mr-item-in-the-cts-frame", "ct-item-in-the-mrs-frame"])
def test_an_mr_in_another_frame_is_paired_through_a_rigid_registration(direction, protocol, tmp_path):
    src, context = study(tmp_path)
    mr_context = replace(context, frame_of_reference_uid=generate_uid())
    add_mr(src / "mr", mr_context, CT_FROM_MR)
    if direction == "mr-item-in-the-cts-frame":  # as most systems write it: the item's points into the CT's frame
        reg = write_registration(src / "REG.dcm", context, {context.frame_of_reference_uid: np.eye(4),
                                                            mr_context.frame_of_reference_uid: CT_FROM_MR})
    else:
        reg = write_registration(src / "REG.dcm", mr_context,
                                 {context.frame_of_reference_uid: np.linalg.inv(CT_FROM_MR)})
    dicom_case, report = read_one(src, protocol)
    assert dicom_case.case.mr is not None, [f.labelled() for f in report.findings]
    (note,) = coded(report, "mr-paired")
    assert f"spatial registration {reg.name}" in note.message
    np.testing.assert_allclose(dicom_case.mr.ct_from_mr, CT_FROM_MR, atol=1e-6)
    assert not report.warnings, [f.labelled() for f in report.warnings]
    assert_on_the_cube(dicom_case.case.mr, dicom_case.case.ct_hu, CT_GRID)


def test_the_inverse_registration_would_put_the_cube_elsewhere(protocol, tmp_path):
    """The check of the direction can fail: the registration read the other way round misplaces the cube."""
    src, context = study(tmp_path)
    mr_context = replace(context, frame_of_reference_uid=generate_uid())
    add_mr(src / "mr", mr_context, CT_FROM_MR)
    write_registration(src / "REG.dcm", context, {mr_context.frame_of_reference_uid: np.linalg.inv(CT_FROM_MR)})
    dicom_case, _ = read_one(src, protocol)
    bright, dense = dicom_case.case.mr > BRIGHT, dicom_case.case.ct_hu > 370.0
    assert not bright.any() or np.linalg.norm(centre_mm(bright, CT_GRID) - centre_mm(dense, CT_GRID)) > 5.0


def test_an_mr_in_another_frame_without_registration_is_not_paired_and_writes_no_mr_csv(protocol, tmp_path):
    src, context = study(tmp_path)
    first = add_mr(src / "mr", replace(context, frame_of_reference_uid=generate_uid()))[0]
    reports = import_dicom(src, tmp_path / "out", protocol, fmt="openkbp")
    (report,) = reports
    (warning,) = report.warnings
    assert warning.code == "mr-not-paired" and warning.path == first and first.name in warning.message
    assert "Frame of Reference" in warning.message and "no spatial registration" in warning.message
    assert warning.fix == "export the MR with a spatial registration to the CT, or register it in the TPS"
    assert (tmp_path / "out" / "mrpat" / "ct.csv").is_file()
    assert not (tmp_path / "out" / "mrpat" / "mr.csv").exists()


@pytest.mark.parametrize(("kind", "reason"), [
    ("affine", "is AFFINE, not RIGID"),
    ("scaled", "is typed RIGID but its matrix"),
    ("deformable", "is a deformable registration, not a rigid one"),
])
def test_a_registration_that_is_not_rigid_is_refused_with_its_reason(kind, reason, protocol, tmp_path):
    src, context = study(tmp_path)
    mr_context = replace(context, frame_of_reference_uid=generate_uid())
    first = add_mr(src / "mr", mr_context, CT_FROM_MR)[0]
    frame = mr_context.frame_of_reference_uid
    if kind == "deformable":
        reg = write_deformable_registration(src / "DREG.dcm", context, frame)
    else:
        scaled = CT_FROM_MR @ np.diag([1.1, 1.1, 1.1, 1.0])
        reg = write_registration(src / "REG.dcm", context, {frame: CT_FROM_MR if kind == "affine" else scaled},
                                 "AFFINE" if kind == "affine" else "RIGID")
    dicom_case, report = read_one(src, protocol)
    assert dicom_case.case.mr is None
    (warning,) = coded(report, "mr-not-paired")
    assert warning.path == first and f"{reg.name} {reason}" in warning.message


def test_import_dicom_openkbp_writes_mr_csv_on_the_protocol_grid_readable_by_the_openkbp_reader(protocol, tmp_path):
    src, context = study(tmp_path)
    mr_context = replace(context, frame_of_reference_uid=generate_uid())
    add_mr(src / "mr", mr_context, CT_FROM_MR)
    write_registration(src / "REG.dcm", context, {mr_context.frame_of_reference_uid: CT_FROM_MR})
    assert cli.main(["data", "import-dicom", str(src), str(tmp_path / "out"), "--protocol", "hn-openkbp",
                     "--format", "openkbp"]) == 0
    patient = tmp_path / "out" / "mrpat"
    assert (patient / "mr.csv").is_file() and not (patient / "mr.csv.gz").exists()
    case, report = read_openkbp_case(patient, protocol)
    assert report.usable and case.mr is not None and case.mr.shape == tuple(protocol.grid.shape)
    bright, dense = case.mr > BRIGHT, case.ct_hu > 370.0
    assert bright.any() and dense.any()
    index = np.argwhere(bright).mean(axis=0) - np.argwhere(dense).mean(axis=0)
    assert np.linalg.norm(index * np.asarray(case.spacing_mm)) < 1.5  # coarser protocol voxels: 3.9 mm in-plane
    body_only = (case.ct_hu > 0) & (case.ct_hu < 100)
    assert np.median(case.mr[body_only]) == pytest.approx(MR_BODY, abs=1.0)
    assert case.mr[0, 0].max() == 0.0 and case.mr[:, :, 0].max() == 0.0  # far from the MR: no signal


def test_an_mr_missing_part_of_the_body_warns_and_is_zero_there(protocol, tmp_path):
    src, context = study(tmp_path)
    add_mr(src / "mr", context, shape=(30, 30, 5), spacing=(2.5, 2.5, 3.0))  # 15 mm of the CT's 36 mm
    dicom_case, report = read_one(src, protocol)
    (warning,) = coded(report, "mr-field-of-view")
    assert "outside the MR's field of view" in warning.message
    mr = dicom_case.case.mr
    assert np.all(mr[:, :, 0] == 0) and np.all(mr[:, :, -1] == 0) and mr[:, :, SHAPE[2] // 2].max() > 0


def test_of_several_pairable_mrs_the_t1_is_used_and_named(protocol, tmp_path):
    src, context = study(tmp_path)
    where = mr_grid(np.eye(4))
    values = synthetic_mr(where, np.eye(4))
    write_mr_series(src / "t2", values * 0.5, where, context, description="t2_tse_tra")
    more = mr_grid(np.eye(4), shape=(30, 30, 20), spacing=(2.5, 2.5, 2.5))
    write_mr_series(src / "t2b", synthetic_mr(more, np.eye(4)) * 0.5, more, context, description="T2 FLAIR")
    t1 = write_mr_series(src / "t1", values, where, context, description="AX T1W")
    dicom_case, report = read_one(src, protocol)
    (note,) = coded(report, "mr-paired")
    assert note.path == t1[0] and "'AX T1W'" in note.message and "2 other pairable MR series" in note.message
    assert dicom_case.case.mr.max() > BRIGHT  # the T1's values, not the halved T2's


def test_rigid_resampling_point_by_point_agrees_with_the_separable_path():
    rng = np.random.default_rng(0)
    source = VolumeGrid((12, 10, 8), (2.0, 2.5, 3.0), (-10.0, -12.0, 9.0))
    target = VolumeGrid((9, 11, 7), (1.7, 2.1, 2.6), (-8.0, -9.0, 7.0))
    values = rng.random(source.shape).astype(np.float32)
    shifted = np.eye(4)
    shifted[:3, 3] = (1.3, -0.7, 0.4)
    nearly = shifted.copy()
    nearly[:2, :2] = [[1.0, -1e-7], [1e-7, 1.0]]  # takes the point-by-point path
    separable, pointwise = (resample_rigid(values, source, target, m, cval=-5.0) for m in (shifted, nearly))
    np.testing.assert_allclose(pointwise, separable, atol=1e-4)
    assert (separable == -5.0).any() and (separable != -5.0).any()


def test_pydicom_mr_small_reads_as_a_one_slice_volume_with_its_geometry():
    path = Path(get_testdata_file("MR_small.dcm"))
    ds = pydicom.dcmread(path)
    report = CaseReport("MR_small", path)
    series = read_mr_series([(path, ds)], report)
    assert series is not None and report.usable
    assert series.values.shape == (64, 64, 1) and series.values.dtype == np.float32
    assert series.grid.spacing_mm == pytest.approx((0.3125, 0.3125, 0.8))  # PixelSpacing, SliceThickness
    assert series.grid.origin_mm == pytest.approx((-83.9063, -91.2, 6.6406))  # ImagePositionPatient
    np.testing.assert_array_equal(series.values[:, :, 0], ds.pixel_array)  # rows along y (axis 0), columns x
    assert series.frame_of_reference_uid == ds.FrameOfReferenceUID


def test_pydicom_truncated_mr_is_refused_naming_the_file(tmp_path):
    path = Path(get_testdata_file("MR_truncated.dcm"))
    report = CaseReport("MR_truncated", path)
    assert read_mr_series([(path, pydicom.dcmread(path))], report) is None
    (error,) = report.errors
    assert error.path == path and "MR_truncated.dcm" in error.message and "re-export" in error.fix


def test_a_truncated_mr_beside_the_ct_is_a_warning_naming_it_and_the_ct_is_still_imported(protocol, tmp_path):
    src, context = study(tmp_path)
    copy = Path(shutil.copy(get_testdata_file("MR_truncated.dcm"), src / "MR_truncated.dcm"))
    edit(copy, PatientID="mrpat", FrameOfReferenceUID=context.frame_of_reference_uid)  # rewritten whole
    copy.write_bytes(copy.read_bytes()[:-500])  # cut again, inside the pixel data
    dicom_case, report = read_one(src, protocol)
    assert dicom_case is not None and dicom_case.case.mr is None and report.usable
    (warning,) = coded(report, "truncated-slice")
    assert warning.path == copy and "MR slice MR_truncated.dcm is truncated" in warning.message
    assert "not used" in warning.message


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_pydicom_compressed_mr_is_read_when_it_can_be_decoded_here_else_refused_naming_the_syntax(name):
    path = Path(get_testdata_file(name))
    ds = pydicom.dcmread(path)
    try:
        decodable = ds.pixel_array is not None
    except RuntimeError:  # no decoder plugin installed for this transfer syntax
        decodable = False
    report = CaseReport(name, path)
    series = read_mr_series([(path, pydicom.dcmread(path))], report)
    if decodable:
        reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
        assert series is not None
        np.testing.assert_array_equal(series.values[:, :, 0], reference)
    else:
        assert series is None
        (error,) = report.errors
        syntax = ds.file_meta.TransferSyntaxUID
        assert error.code == "compressed-pixels" and error.path == path and name in error.message
        assert syntax.name in error.message and str(syntax) in error.message and "uncompressed" in error.fix


def test_jpeg_ls_is_refused_here_with_its_transfer_syntax():
    """The environment has no JPEG-LS decoder: the refusal above is exercised, not only the reading."""
    path = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    report = CaseReport("jpeg-ls", path)
    if read_mr_series([(path, pydicom.dcmread(path))], report) is not None:
        pytest.skip("a JPEG-LS decoder is installed here: the MR was read")
    (error,) = report.errors
    assert "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in error.message


def test_the_siemens_mosaic_from_dicom3tools_is_refused_naming_the_file():
    path = require_data(SIEMENS_MR, DICOM3TOOLS)
    report = CaseReport("siemens", path)
    assert read_mr_series([(path, pydicom.dcmread(path))], report) is None
    (error,) = report.errors
    assert error.code == "mr-mosaic" and error.path == path and "0051.dcm" in error.message
    assert "one image per slice" in error.fix


def test_an_enhanced_mr_is_refused_asking_for_classic_single_frame_mr(protocol, tmp_path):
    src, context = study(tmp_path)
    files = add_mr(src / "mr", context)
    for path in files:
        edit(path, SOPClassUID="1.2.840.10008.5.1.4.1.1.4.1")
    dicom_case, report = read_one(src, protocol)
    assert dicom_case.case.mr is None and report.usable
    (warning,) = coded(report, "multi-frame-mr")
    assert warning.path == files[0] and "Enhanced MR Image Storage" in warning.message
    assert "classic single-frame MR" in warning.fix and "not used" in warning.message
