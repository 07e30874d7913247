"""The planning pipeline on a small phantom, and its RT Plan: geometry consistent with the engine, dciodvfy clean."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pydicom
import pytest
from dicom_cases import dciodvfy_errors
from planning_phantoms import cylinder_case

from protocols.metrics import evaluate_goals
from runtime.planning.geometry import MLC_BOUNDARIES_MM
from runtime.planning.idealdose import ideal_dose
from runtime.planning.outputs import write_plan_files
from runtime.planning.plan import PlanConfig, make_plan
from runtime.planning.report import write_report
from runtime.planning.sampling import SampleBudget


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    case, protocol = cylinder_case()
    target = ideal_dose(case, protocol)
    stages = []
    plan = make_plan(case, protocol, target, PlanConfig(n_beams=5, max_iterations=60,
                                                        budget=SampleBudget(1500, 800, 1500, 1500)),
                     progress=lambda stage, message: stages.append(stage))
    folder = tmp_path_factory.mktemp("plan")
    files = write_plan_files(folder, case, protocol, plan)
    return case, protocol, target, plan, files, stages


def test_pipeline_reports_every_stage_and_covers_the_target(planned):
    case, protocol, _, plan, _, stages = planned
    assert list(plan.timings_s) == ["geometry", "matrix", "optimisation", "sequencing", "final dose"]
    assert set(stages) == set(plan.timings_s)
    goals = {r.goal.label: r for r in evaluate_goals(plan.dose_gy, case.structures, case.voxel_volume_mm3, protocol)}
    ptv = case.mask("PTV")
    assert np.percentile(plan.dose_gy[ptv], 5) >= 0.93 * 50.0  # near the D95 goal after 60 iterations
    assert goals["Cord D0.1cc <= 30 Gy"].value_gy < np.percentile(plan.dose_gy[ptv], 50)
    assert plan.dose_gy[~case.possible_dose_mask].max() == 0.0


def test_final_dose_is_the_dose_of_the_segments(planned):
    """Recomputed from the leaf positions, the dose differs from the optimiser's only by the quantisation."""
    _, _, _, plan, _, _ = planned
    sampled = plan.dose_gy.ravel()[plan.sampled_flat_index]
    diff = np.abs(sampled - plan.fluence_dose_gy)
    assert np.median(diff) < 0.03 * 50.0
    assert plan.n_segments > len(plan.beams)


STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
                    "Manufacturer", "SoftwareVersions", "SpecificCharacterSet")


def test_ct_rtstruct_rtdose_and_rtplan_of_a_patient_carry_identical_patient_and_study_attributes(planned):
    case, _, _, _, files, _ = planned
    objects = [next(files.dicom_folder.glob("CT*.dcm")), files.rtstruct, files.rtdose, files.rtplan]
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in objects]
    assert [ds.Modality for ds in headers] == ["CT", "RTSTRUCT", "RTDOSE", "RTPLAN"]
    values = [{keyword: str(ds.get(keyword)) for keyword in STUDY_ATTRIBUTES} for ds in headers]
    assert values[1:] == values[:1] * 3
    assert values[0]["PatientName"] == f"{case.patient_id}^" and values[0]["PatientID"] == case.patient_id
    assert values[0]["SoftwareVersions"] == importlib.metadata.version("fedrt")


def test_rtplan_geometry_matches_the_engine(planned):
    _, protocol, _, plan, files, _ = planned
    ds = pydicom.dcmread(files.rtplan)
    assert ds.RTPlanGeometry == "PATIENT"
    rtstruct = pydicom.dcmread(files.rtstruct)
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rtstruct.SOPInstanceUID
    assert ds.FrameOfReferenceUID == rtstruct.FrameOfReferenceUID
    assert ds.FractionGroupSequence[0].NumberOfFractionsPlanned == protocol.fractions
    ref = ds.DoseReferenceSequence[0]
    assert float(ref.TargetPrescriptionDose) == 50.0 and ref.DoseReferenceStructureType == "VOLUME"
    for beam_ds, beam, seq, ref_beam in zip(ds.BeamSequence, plan.beams, plan.sequences,
                                            ds.FractionGroupSequence[0].ReferencedBeamSequence, strict=True):
        cps = beam_ds.ControlPointSequence
        assert float(cps[0].GantryAngle) == pytest.approx(beam.gantry_deg)
        np.testing.assert_allclose([float(v) for v in cps[0].IsocenterPosition], plan.isocenter_lps, atol=0.01)
        assert float(ref_beam.BeamMeterset) == pytest.approx(seq.mu / plan.fractions, rel=1e-3)
        mlc = beam_ds.BeamLimitingDeviceSequence[2]
        np.testing.assert_allclose([float(v) for v in mlc.LeafPositionBoundaries], MLC_BOUNDARIES_MM)
        jaws = {d.RTBeamLimitingDeviceType: [float(v) for v in d.LeafJawPositions]
                for d in cps[0].BeamLimitingDevicePositionSequence}
        x1, x2 = jaws["ASYMX"]
        y1, y2 = jaws["ASYMY"]
        np.testing.assert_allclose([x1, x2, y1, y2], seq.jaws_mm(), atol=0.01)
        weights = [float(cp.CumulativeMetersetWeight) for cp in cps]
        assert weights[0] == 0.0 and weights[-1] == 1.0 and np.all(np.diff(weights) >= 0)
        # Rebuild the fluence from the control points: it is the sequencer's, on the engine's beamlet grid.
        grid = seq.grid
        centres_u = (grid.col_edges_mm[:-1] + grid.col_edges_mm[1:]) / 2
        centres_w = (grid.row_edges_mm[:-1] + grid.row_edges_mm[1:]) / 2
        leaf = np.searchsorted(MLC_BOUNDARIES_MM, centres_w) - 1
        fluence = np.zeros(grid.shape)
        for k in range(0, len(cps), 2):
            positions = [float(v) for v in cps[k].BeamLimitingDevicePositionSequence[-1].LeafJawPositions]
            bank1, bank2 = np.array(positions[:60]), np.array(positions[60:])
            assert np.all(bank1 <= bank2)
            opened = ((centres_u[None, :] > np.maximum(bank1[leaf], x1)[:, None])
                      & (centres_u[None, :] < np.minimum(bank2[leaf], x2)[:, None])
                      & (centres_w[:, None] > y1) & (centres_w[:, None] < y2))
            fluence += (weights[k + 1] - weights[k]) * seq.mu * opened
        np.testing.assert_allclose(fluence, seq.fluence(), atol=1e-3 * max(seq.mu, 1.0))


def test_rtplan_passes_dciodvfy(planned):
    assert dciodvfy_errors(planned[4].rtplan) == []


def test_report_holds_goal_table_and_pictures(planned, tmp_path):
    case, protocol, target, plan, _, _ = planned
    html = write_report(tmp_path, case, protocol, plan, target, "ideal dose", plan.timings_s)
    text = html.read_text()
    assert "PTV D95 &gt;= 1 x Rx" in text and "Cord D0.1cc &lt;= 30 Gy" in text
    for png in ("plan_dose.png", "target_dose.png", "dvh.png"):
        assert (tmp_path / png).stat().st_size > 10_000
