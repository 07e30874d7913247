"""``fedrt sct``: a synthetic CT of a patient's MR written as a DICOM CT series in the MR's own study and Frame of
Reference (a phantom's simulated MR written as an MR series with an off-centre origin), valid for dciodvfy; an
OpenKBP patient with ``mr.csv`` works too; wrong input is refused with the reason.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pydicom
import pytest
from dicom_cases import dciodvfy_errors, write_mr_series
from external import DICOM3TOOLS, require_tool

from configs.compose import compose
from fedrt.cli import main
from models.centralized import task_from_config
from protocols.dicom.export import centred_grid
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.header import StudyContext
from protocols.openkbp import write_openkbp_case
from protocols.phantom import generate_phantom
from protocols.simulated_mr import Scanner, simulate_mr
from runtime.sct import SCT_DESCRIPTION

OFFSET_MM = (37.3, -52.1, 121.7)


@pytest.fixture(scope="module")
def patient():
    """A phantom on the protocol grid with the MR of one hospital's scanner."""
    task = task_from_config(compose(["preset=smoke", "task=sct"]))
    case = generate_phantom(task.protocol, 0, 1)
    case.mr = simulate_mr(case.ct_hu, case.spacing_mm, Scanner.for_site(4), case.possible_dose_mask)
    return case


@pytest.fixture(scope="module")
def mr_folder(patient, tmp_path_factory):
    """The MR as a DICOM series off the scanner's centre, in the patient's own study and frame."""
    centred = centred_grid(patient.shape, patient.spacing_mm)
    grid = VolumeGrid(centred.shape, centred.spacing_mm,
                      tuple(round(o + d, 3) for o, d in zip(centred.origin_mm, OFFSET_MM, strict=True)))
    context = StudyContext("MRONLY-7", "Doe^Jane", patient_birth_date="19500101", patient_sex="F",
                           study_date="20260101", study_id="S7", referring_physician="House^Greg")
    folder = tmp_path_factory.mktemp("mr") / "dicom"
    write_mr_series(folder, patient.mr, grid, context)
    return folder, grid


def test_fedrt_sct_writes_a_ct_series_in_the_mrs_frame_and_study(mr_folder, sct_checkpoint, tmp_path, capsys):
    folder, grid = mr_folder
    out = tmp_path / "sct"
    assert main(["sct", str(folder), "--model", str(sct_checkpoint), "--out", str(out)]) == 0
    assert "synthetic CT: 128 slices" in capsys.readouterr().out
    files = sorted(out.glob("CT.*.dcm"))
    mr_first = pydicom.dcmread(sorted(folder.glob("MR.*.dcm"))[0])
    assert len(files) == grid.shape[2]
    first = pydicom.dcmread(files[0])
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyID", "ReferringPhysicianName", "FrameOfReferenceUID"):
        assert first.get(keyword) == mr_first.get(keyword), keyword
    assert first.SeriesInstanceUID != mr_first.SeriesInstanceUID
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription.startswith(SCT_DESCRIPTION) and "sha256:" in first.SeriesDescription
    assert "t1_se_tra" in first.DerivationDescription
    for k in (0, grid.shape[2] - 1):  # the same positions as the MR's slices
        ds = pydicom.dcmread(files[k])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], grid.to_mm((0, 0, k)), atol=1e-3)
    hu = np.stack([pydicom.dcmread(f).pixel_array for f in files], axis=-1)
    assert hu.shape == grid.shape and hu.min() >= -1000 and (hu > -1000).any()
    require_tool("dciodvfy", DICOM3TOOLS)
    assert dciodvfy_errors(files[0]) == []


def test_fedrt_sct_reads_an_openkbp_patient_with_an_mr(patient, sct_checkpoint, tmp_path):
    folder = write_openkbp_case(patient, tmp_path / "pt_1")
    assert main(["sct", str(folder), "--model", str(sct_checkpoint), "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("CT.*.dcm"))) == patient.shape[2]


def test_fedrt_sct_refuses_what_it_cannot_use(mr_folder, sct_checkpoint, patient, tmp_path, capsys):
    folder, _ = mr_folder
    two = tmp_path / "two"
    shutil.copytree(folder, two / "a")
    write_mr_series(two / "b", patient.mr, centred_grid(patient.shape, patient.spacing_mm), StudyContext("MRONLY-7"))
    assert main(["sct", str(two), "--model", str(sct_checkpoint), "--out", str(tmp_path / "o1")]) == 2
    assert "expected exactly one MR series, found 2" in capsys.readouterr().err
    no_mr = write_openkbp_case(dataclasses.replace(patient, mr=None), tmp_path / "pt_2")
    assert main(["sct", str(no_mr), "--model", str(sct_checkpoint), "--out", str(tmp_path / "o2")]) == 2
    assert "has no mr.csv" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
