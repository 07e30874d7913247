"""``fedrt plan MR_FOLDER --sct ...|--sct-model ...``: an MR-only patient (a phantom's simulated MR written as an MR
series off the scanner's centre, an RT Structure Set contoured in the MR's frame, no CT) planned on a synthetic CT;
everything written joins the MR's patient, study and frame, the synthetic CT is written beside the plan, the
densities are flagged as synthetic; wrong input is refused with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_cases import dciodvfy_errors, edit, move_to_other_frame, write_mr_series
from external import DICOM3TOOLS, require_tool
from pydicom.uid import generate_uid

from fedrt.cli import main
from models.checkpoint import save_checkpoint
from protocols.dicom.export import CtReference, centred_grid, write_ct_series, write_rtdose, write_rtstruct
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.header import StudyContext
from protocols.dicom.mr import MR_IMAGE_STORAGE
from protocols.errors import ConfigError, DataError, DicomError
from protocols.phantom import generate_phantom
from protocols.simulated_mr import Scanner, simulate_mr
from runtime.planning.inputs import load_planning_patient
from runtime.planning.pipeline import PlanRequest
from runtime.planning.plan import PlanConfig
from runtime.planning.synthetic_ct import AIR_HU, BULK_BONE_HU, WATER_HU, SctSource
from runtime.sct import SCT_DESCRIPTION, PatientMr, predict_sct

OFFSET_MM = (37.3, -52.1, 121.7)  # an off-centre origin, as a scanner writes it
CLINIC_NAMES = {"PTV70": "PTV_7000", "PTV63": "PTV_6300", "PTV56": "PTV_5600", "SpinalCord": "Cord",
                "Brainstem": "Brain_Stem", "RightParotid": "Parotid_R", "LeftParotid": "Parotid_L",
                "Mandible": "Mandible", "Esophagus": "Esophagus", "Larynx": "Larynx"}
BONES_MIN_HU = 300.0  # the phantom's skull and vertebrae (not its mandible) are contoured as one ROI "Bones" above it
FAST = ["--beams", "7", "--iterations", "30"]  # a plan to check what is written, not its quality
SAME = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyID",
        "ReferringPhysicianName", "FrameOfReferenceUID")


@pytest.fixture(scope="module")
def phantom(protocol):
    """A phantom with a mandible on the protocol grid, with the MR of one hospital's scanner."""
    case = next(c for n in range(1, 20) if "Mandible" in (c := generate_phantom(protocol, 0, n)).structures)
    case.mr = simulate_mr(case.ct_hu, case.spacing_mm, Scanner.for_site(4), case.possible_dose_mask)
    return case


@pytest.fixture(scope="module")
def mr_only(phantom, tmp_path_factory):
    """The MR as an MR series with its own patient, study and off-centre frame, the structure set contoured on it
    (clinic names, a "Bones" ROI, a vertebral artery that is not bone) and the phantom's dose as an RT Dose in that
    frame, outside the folder.
    """
    centred = centred_grid(phantom.shape, phantom.spacing_mm)
    grid = VolumeGrid(centred.shape, centred.spacing_mm,
                      tuple(round(o + d, 3) for o, d in zip(centred.origin_mm, OFFSET_MM, strict=True)))
    context = StudyContext("MRONLY-9", "Roe^Rita", patient_birth_date="19520202", patient_sex="F",
                           study_date="20260301", study_id="S9", referring_physician="Quinn^Mo")
    base = tmp_path_factory.mktemp("mr-only")
    folder = base / "dicom"
    paths = write_mr_series(folder, phantom.mr, grid, context)
    uids = tuple(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)  # superior first
    masks = {CLINIC_NAMES[name]: mask for name, mask in phantom.structures.items()}
    masks["Bones"] = (phantom.ct_hu > BONES_MIN_HU) & ~phantom.structures["Mandible"]
    artery = np.zeros(phantom.shape, bool)
    artery[60:64, 60:64, 60:70] = True  # soft tissue named like a bone ("A_Vertebral_L" is an artery)
    masks["A_Vertebral_L"] = artery & phantom.possible_dose_mask
    types = {name: "PTV" if name.startswith("PTV") else "ORGAN" for name in masks}
    rtstruct = write_rtstruct(masks, grid, CtReference(str(pydicom.dcmread(paths[0]).SeriesInstanceUID), uids),
                              folder / "RTSTRUCT.dcm", context, types)
    structures = pydicom.dcmread(rtstruct)
    for item in structures.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
            .RTReferencedSeriesSequence[0].ContourImageSequence:
        item.ReferencedSOPClassUID = MR_IMAGE_STORAGE  # contoured on MR images
    for roi in structures.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            contour.ContourImageSequence[0].ReferencedSOPClassUID = MR_IMAGE_STORAGE
    structures.save_as(rtstruct)
    rtdose = write_rtdose(phantom.dose_gy, grid, base / "RD.dcm", context, generate_uid())
    return {"folder": folder, "grid": grid, "rtdose": rtdose, "masks": masks, "rtstruct": structures,
            "mr": pydicom.dcmread(paths[0], stop_before_pixels=True)}


def _plan(mr_only: dict, out: Path, *options: str) -> int:
    return main(["plan", str(mr_only["folder"]), "--target-dose", str(mr_only["rtdose"]), "--out", str(out),
                 *FAST, *options])


def _sct_slices(out: Path) -> list[Path]:
    return sorted((out / "dicom").glob("CT.*.dcm"))


def test_a_bulk_density_plan_joins_the_mrs_patient_study_and_frame_with_its_synthetic_ct(mr_only, tmp_path,
                                                                                         capsys):
    out = tmp_path / "plan"
    assert _plan(mr_only, out, "--sct", "bulk") == 0
    printed = capsys.readouterr()
    rtplan, rtdose = out / "dicom" / "RTPLAN.dcm", out / "dicom" / "RTDOSE.dcm"
    slices = _sct_slices(out)
    grid, mr = mr_only["grid"], mr_only["mr"]
    assert len(slices) == grid.shape[2]  # the synthetic CT on the planning grid: the MR's lattice here
    for path in (rtplan, rtdose, slices[0]):
        ds = pydicom.dcmread(path)
        for keyword in SAME:
            assert ds.get(keyword) == mr.get(keyword), (path.name, keyword)
        assert ds.SeriesInstanceUID != mr.SeriesInstanceUID
    plan = pydicom.dcmread(rtplan)
    structures = mr_only["rtstruct"]
    assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == structures.SOPInstanceUID
    numbers = {str(r.ROIName): int(r.ROINumber) for r in structures.StructureSetROISequence}
    assert {int(r.ReferencedROINumber) for r in plan.DoseReferenceSequence} == {
        numbers[CLINIC_NAMES[t]] for t in ("PTV70", "PTV63", "PTV56") if CLINIC_NAMES[t] in numbers}
    dose = pydicom.dcmread(rtdose)
    np.testing.assert_allclose([float(v) for v in dose.ImagePositionPatient], grid.origin_mm, atol=1e-3)
    np.testing.assert_allclose([float(v) for v in dose.PixelSpacing], grid.spacing_mm[:2], atol=1e-3)
    assert dose.pixel_array.max() * float(dose.DoseGridScaling) > 50.0
    sct = pydicom.dcmread(slices[0])
    assert list(sct.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert sct.SeriesDescription == f"{SCT_DESCRIPTION} (bulk density water)"
    assert mr.SeriesInstanceUID in sct.DerivationDescription
    hu = np.stack([pydicom.dcmread(p).pixel_array for p in slices], axis=-1).astype(float)
    assert set(np.unique(hu)) == {AIR_HU, WATER_HU}
    for k in (0, grid.shape[2] - 1):
        np.testing.assert_allclose([float(v) for v in pydicom.dcmread(slices[k]).ImagePositionPatient],
                                   grid.to_mm((0, 0, k)), atol=1e-3)
    summary = json.loads((out / "plan.json").read_text())
    assert summary["warnings"][0].startswith("the densities are synthetic")
    assert "bulk density water" in summary["warnings"][0]
    assert summary["synthetic_ct"]["source"] == "bulk density water"
    assert "the densities are synthetic" in (out / "report" / "report.html").read_text()
    assert "warning: the densities are synthetic" in printed.out
    require_tool("dciodvfy", DICOM3TOOLS)
    for path in (rtplan, rtdose, slices[len(slices) // 2]):
        assert dciodvfy_errors(path) == [], path.name


def test_bulk_bone_makes_the_mandible_and_the_bone_rois_bone_and_nothing_else(mr_only, phantom, protocol):
    water = load_planning_patient(mr_only["folder"], protocol, sct=SctSource(bulk="bulk"))
    bone = load_planning_patient(mr_only["folder"], protocol, sct=SctSource(bulk="bulk-bone"))
    mandible, bones = phantom.structures["Mandible"], mr_only["masks"]["Bones"]
    assert water.case.shape == bone.case.shape == phantom.shape  # the planning grid is the MR's lattice here
    assert set(np.unique(water.case.ct_hu)) == {AIR_HU, WATER_HU}  # no bone without --sct bulk-bone
    # all of each bone ROI, where the MR's outline misses dark cortical bone at the skin (the chin) too
    assert np.all(bone.case.ct_hu[mandible] == BULK_BONE_HU) and np.all(bone.case.ct_hu[bones] == BULK_BONE_HU)
    artery = mr_only["masks"]["A_Vertebral_L"]
    assert artery.any() and np.all(bone.case.ct_hu[artery] == WATER_HU)
    elsewhere = ~(mandible | bones)
    np.testing.assert_array_equal(bone.case.ct_hu[elsewhere], water.case.ct_hu[elsewhere])
    body = water.case.ct_hu == WATER_HU  # the MR's outline: the phantom's body, give or take its edge
    assert (body & phantom.possible_dose_mask).sum() / (body | phantom.possible_dose_mask).sum() > 0.9
    assert bone.synthetic.label == f"bulk density water+bone {BULK_BONE_HU:g} HU"
    assert bone.warnings[0].startswith("the densities are synthetic") and bone.synthetic.label in bone.warnings[0]


def test_an_sct_checkpoints_plan_is_computed_on_its_synthetic_ct(mr_only, sct_checkpoint, protocol, tmp_path):
    out = tmp_path / "plan"
    assert _plan(mr_only, out, "--sct-model", str(sct_checkpoint)) == 0
    slices = _sct_slices(out)
    sct = pydicom.dcmread(slices[0])
    assert sct.SeriesDescription.startswith(f"{SCT_DESCRIPTION} (checkpoint sha256:")
    written = np.stack([pydicom.dcmread(p).pixel_array for p in slices], axis=-1).astype(np.float32)
    from models.checkpoint import load_checkpoint
    from protocols.dicom.mr import read_mr_series
    from protocols.validation import CaseReport

    items = [(p, pydicom.dcmread(p)) for p in sorted(mr_only["folder"].glob("MR.*.dcm"))]
    series = read_mr_series(items, CaseReport("x", mr_only["folder"]))
    expected = predict_sct(load_checkpoint(sct_checkpoint), PatientMr("x", series.values, series.grid,
                                                                 StudyContext("x"), "MR"))
    np.testing.assert_allclose(written, np.round(expected), atol=1.0)  # the model's CT, not a bulk one
    assert len(np.unique(written)) > 10
    summary = json.loads((out / "plan.json").read_text())
    assert summary["synthetic_ct"]["source"].startswith("checkpoint sha256:")
    assert summary["warnings"][0].startswith("the densities are synthetic")
    for keyword in SAME:
        assert pydicom.dcmread(out / "dicom" / "RTDOSE.dcm").get(keyword) == mr_only["mr"].get(keyword), keyword


def test_an_mr_only_folder_without_a_synthetic_ct_source_is_refused_with_the_options(mr_only, tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(["plan", str(mr_only["folder"]), "--target-dose", str(mr_only["rtdose"]), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "and no CT: plan this MR-only patient on a synthetic CT" in error
    assert "--sct-model MODEL" in error and "--sct bulk|bulk-bone" in error
    assert not out.exists()


def test_a_folder_with_a_ct_is_planned_on_the_ct_not_on_a_synthetic_one(mr_only, phantom, protocol, tmp_path):
    folder = tmp_path / "with-ct"
    shutil.copytree(mr_only["folder"], folder)
    write_ct_series(phantom.ct_hu, mr_only["grid"], folder, StudyContext.of_image(mr_only["mr"]))
    with pytest.raises(DicomError, match=r"holds a CT \(CT \(CT\.0001\.dcm .*--sct bulk plans an MR-only patient.*"
                                         r"plan on the CT \(leave the option out\), or remove the CT"):
        load_planning_patient(folder, protocol, sct=SctSource(bulk="bulk"))


def test_a_structure_set_on_another_frame_than_the_mr_is_refused(mr_only, protocol, tmp_path):
    folder = tmp_path / "other-frame"
    shutil.copytree(mr_only["folder"], folder)
    structures = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    other = move_to_other_frame(structures)
    structures.save_as(folder / "RTSTRUCT.dcm")
    with pytest.raises(DataError, match=rf"frame of reference {other} differs from the MR's "
                                        rf"{mr_only['mr'].FrameOfReferenceUID}.*structure set contoured on this MR"):
        load_planning_patient(folder, protocol, sct=SctSource(bulk="bulk"))


def test_an_mr_not_scanned_head_first_supine_is_refused(mr_only, protocol, tmp_path):
    folder = tmp_path / "ffs"
    shutil.copytree(mr_only["folder"], folder)
    for path in folder.glob("MR.*.dcm"):
        edit(path, PatientPosition="FFS")
    with pytest.raises(DicomError, match=r"the MR was scanned FFS; .*head-first supine"):
        load_planning_patient(folder, protocol, sct=SctSource(bulk="bulk"))


def test_what_cannot_make_or_use_a_synthetic_ct_is_refused(mr_only, phantom, protocol, tmp_path, capsys):
    with pytest.raises(ConfigError, match="one source of the synthetic CT"):
        SctSource(model="sct.pt", bulk="bulk")
    with pytest.raises(ConfigError, match="--sct water is not a bulk density; choose bulk or bulk-bone"):
        SctSource(bulk="water")
    with pytest.raises(ConfigError, match="--seg-model contours OARs on a CT"):
        PlanRequest(mr_only["folder"], tmp_path / "p", protocol, PlanConfig(), target_dose=mr_only["rtdose"],
                    seg_model="seg.pt", sct=SctSource(bulk="bulk"))
    from protocols.openkbp import write_openkbp_case

    openkbp = write_openkbp_case(phantom, tmp_path / "pt_1")
    with pytest.raises(ConfigError, match=r"--sct bulk-bone: .* is an OpenKBP patient folder"):
        load_planning_patient(openkbp, protocol, sct=SctSource(bulk="bulk-bone"))
    from models.config import ModelConfig
    from models.tasks import make_task

    dose = make_task("dose", protocol, ModelConfig(channels=(4, 8), strides=(2,), res_units=0, downsample=2,
                                                   patch=(32, 32, 32)))
    dose_model = save_checkpoint(tmp_path / "dose.pt", dose, dose.build_network())
    with pytest.raises(ConfigError, match=r"--sct-model .*dose\.pt is a .* model; give a .* model"):
        load_planning_patient(mr_only["folder"], protocol, sct=SctSource(model=str(dose_model)))
    with pytest.raises(SystemExit):
        main(["plan", str(mr_only["folder"]), "--target-dose", str(mr_only["rtdose"]), "--out", str(tmp_path / "o"),
              "--sct", "bulk", "--sct-model", "sct.pt"])
    assert "not allowed with argument" in capsys.readouterr().err
