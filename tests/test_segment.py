"""``fedrt segment``: a CT in (DICOM folder or OpenKBP patient), an RT Structure Set out that matches the masks."""

from __future__ import annotations

import pydicom
import pytest
from dicom_cases import dciodvfy_errors, dice

from configs.compose import compose
from fedrt.cli import main
from models.centralized import run_training
from models.checkpoint import load_checkpoint
from protocols.dicom.export import export_case
from protocols.dicom.header import StudyContext
from protocols.dicom.rtstruct import rasterise_roi, read_structure_set
from protocols.openkbp import load_openkbp_case
from protocols.validation import CaseReport
from runtime.segmentation import read_planning_ct, segment


@pytest.fixture(scope="module")
def seg_model_path(openkbp_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "seg.pt"
    config = compose(["preset=smoke", "task=seg", f"data.root={openkbp_root}", "data.max_val_cases=0",
                      f"output={path}"])
    return run_training(config, progress=False).checkpoint


@pytest.fixture(scope="module")
def seg_model(seg_model_path):
    return load_checkpoint(seg_model_path)


@pytest.fixture(scope="module")
def dicom_ct(openkbp_root, protocol, tmp_path_factory):
    """A shared patient exported as DICOM (CT + RTSTRUCT + RTDOSE) to feed the runtime a real DICOM folder."""
    case, _ = load_openkbp_case(openkbp_root / "validation-pats" / "pt_201", protocol)
    out = tmp_path_factory.mktemp("dicom") / "pt_201"
    export_case(case, out, protocol=protocol, context=StudyContext(
        "201-HN", "head^neck", patient_birth_date="19500101", patient_sex="O", study_date="20200101",
        study_time="093000", study_id="7", accession_number="A17", referring_physician="physician^ref"))
    return out


def _read_back(rtstruct_path, grid):
    ds = pydicom.dcmread(rtstruct_path)
    report = CaseReport("read-back", rtstruct_path)
    structure_set = read_structure_set(ds, rtstruct_path, report)
    return ds, {roi.name: rasterise_roi(roi, grid, report, rtstruct_path) for roi in structure_set.rois}


def test_segment_dicom_ct_references_the_input_series_and_matches_its_masks(seg_model, dicom_ct, protocol,
                                                                             tmp_path):
    ct = read_planning_ct(dicom_ct, protocol)
    result = segment(dicom_ct, seg_model, tmp_path / "out", "models:/fedrt-hn-openkbp-seg/3")
    assert set(result.masks) == set(protocol.oars)
    assert all(mask.shape == ct.grid.shape for mask in result.masks.values())
    assert result.overview.stat().st_size > 10_000
    ds, read_back = _read_back(result.rtstruct, ct.grid)
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.reference.series_uid
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ct.context.frame_of_reference_uid
    assert any(mask.any() for mask in result.masks.values()), "the model found no OAR: nothing to read back"
    assert set(read_back) == {name for name, mask in result.masks.items() if mask.any()}  # no empty ROI
    assert result.not_found == [name for name, mask in result.masks.items() if not mask.any()]
    for name in read_back:
        assert dice(read_back[name], result.masks[name]) >= 0.95, name
    for roi in ds.StructureSetROISequence:
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert roi.ROIGenerationDescription == "fedrt seg model models:/fedrt-hn-openkbp-seg/3"
    source = pydicom.dcmread(sorted(dicom_ct.glob("CT*.dcm"))[0], stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        assert ds.get(keyword) == source.get(keyword), keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert dciodvfy_errors(result.rtstruct) == []


def test_segment_openkbp_patient_writes_ct_and_rtstruct(seg_model_path, openkbp_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(openkbp_root / "validation-pats" / "pt_202"), "--model", str(seg_model_path),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].endswith(".dcm") and "timing:" in "\n".join(printed)
    assert len(list(out.glob("CT*.dcm"))) == 128


def test_segment_refuses_a_dose_model_and_a_folder_without_ct(openkbp_root, tmp_path, seg_model):
    from models.tasks import make_task

    dose = make_task("dose", seg_model.task.protocol, seg_model.task.model_config)
    with pytest.raises(ValueError, match="give a segmentation model"):
        segment(openkbp_root / "validation-pats" / "pt_201",
                type(seg_model)(dose, dose.build_network()), tmp_path / "x", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="exactly one CT series"):
        segment(tmp_path / "empty", seg_model, tmp_path / "y", "test")
