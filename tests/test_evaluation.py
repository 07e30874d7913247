"""The OpenKBP evaluator and ``fedrt evaluate`` on the real validation patients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrt.cli import main
from protocols.dataset import ProtocolDataset
from protocols.evaluation import EvaluationResult, PatientScore, evaluate_dose, evaluate_predictions
from protocols.metrics import DVHMetricError
from protocols.openkbp import write_prediction


@pytest.fixture(scope="module")
def validation_root(openkbp_root) -> Path:
    return openkbp_root / "validation-pats"


@pytest.fixture(scope="module")
def validation_cases(validation_root, protocol) -> list:
    return list(ProtocolDataset(validation_root, protocol, require_dose=True).cases())


@pytest.fixture(scope="module")
def reference_predictions(validation_cases, tmp_path_factory) -> Path:
    """Every validation patient's clinical dose written back as its own prediction."""
    folder = tmp_path_factory.mktemp("reference-predictions")
    for case in validation_cases:
        write_prediction(folder / f"{case.patient_id}.csv", case.dose_gy)
    return folder


def test_reference_as_prediction_scores_zero(validation_root, reference_predictions, protocol,
                                             validation_cases):
    result = evaluate_predictions(validation_root, reference_predictions, protocol)
    assert [p.patient for p in result.patients] == [c.patient_id for c in validation_cases]
    assert len(result.patients) == 10
    assert result.dose_score < 1e-5
    assert result.dvh_score < 1e-5
    assert all(p.n_metrics >= 5 for p in result.patients)
    assert result.skipped == []


def test_plus_one_gray_inside_possible_dose_mask(validation_root, validation_cases, protocol, tmp_path):
    for case in validation_cases:
        write_prediction(tmp_path / f"{case.patient_id}.csv", case.dose_gy + case.possible_dose_mask)
    result = evaluate_predictions(validation_root, tmp_path, protocol)
    # |R - P| is 1 Gy on each possible-dose voxel and 0 elsewhere, so every dose error is exactly 1 Gy.
    assert [p.dose_error for p in result.patients] == pytest.approx([1.0] * 10, abs=1e-5)
    assert result.dose_score == pytest.approx(1.0, abs=1e-5)
    # Percentiles and means shift by exactly 1 Gy in structures that lie inside the possible-dose mask.
    inside = 0
    for case, score in zip(validation_cases, result.patients, strict=True):
        for error in score.dvh_errors:
            if not np.any(case.structures[error.structure] & ~case.possible_dose_mask):
                assert error.abs_error_gy == pytest.approx(1.0, abs=1e-5)
                inside += 1
    assert inside > 50
    assert 0.0 < result.dvh_score <= 1.0 + 1e-5


def test_in_memory_score_matches_file_score(validation_cases, protocol, tmp_path, validation_root):
    case = validation_cases[0]
    predicted = np.where(case.possible_dose_mask, case.dose_gy * 0.9, 0.0)
    in_memory = evaluate_dose(case, predicted, protocol)
    write_prediction(tmp_path / f"{case.patient_id}.csv", predicted)
    from_file = evaluate_predictions(validation_root, tmp_path, protocol, skip_missing=True).patients[0]
    assert from_file.patient == in_memory.patient
    assert from_file.dose_error == pytest.approx(in_memory.dose_error, abs=1e-4)
    assert from_file.dvh_error == pytest.approx(in_memory.dvh_error, abs=1e-4)
    assert in_memory.dose_error > 0.5


def test_evaluate_dose_rejects_wrong_grid_and_non_finite(validation_cases, protocol):
    case = validation_cases[0]
    with pytest.raises(ValueError, match="differs from the case grid"):
        evaluate_dose(case, np.zeros((64, 64, 64)), protocol)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_dose(case, np.full(case.shape, np.nan), protocol)


def test_dvh_score_pools_metrics_over_patients():
    small = PatientScore("pt_1", 1.0, [DVHMetricError("PTV70", "D95", 70.0, 66.0)])
    large = PatientScore("pt_2", 3.0, [DVHMetricError("PTV70", m, 70.0, 70.0) for m in ("D99", "D95", "D1")])
    result = EvaluationResult([small, large])
    assert result.dose_score == pytest.approx(2.0)
    assert result.dvh_score == pytest.approx(1.0)  # (4 + 0 + 0 + 0) / 4, not the mean of per-patient 4 and 0


def test_missing_prediction_is_an_error_naming_the_file(validation_root, protocol, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pt_201\.csv does not exist.*--skip-missing"):
        evaluate_predictions(validation_root, tmp_path, protocol)


def test_skip_missing_reports_skipped_patients(validation_root, validation_cases, protocol, tmp_path):
    case = validation_cases[-1]
    write_prediction(tmp_path / f"{case.patient_id}.csv", case.dose_gy)
    result = evaluate_predictions(validation_root, tmp_path, protocol, skip_missing=True)
    assert [p.patient for p in result.patients] == [case.patient_id]
    assert result.skipped == [c.patient_id for c in validation_cases[:-1]]


def test_cli_json_prints_one_object_with_scores(validation_root, reference_predictions, capsys):
    code = main(["evaluate", "--reference", str(validation_root), "--predictions", str(reference_predictions),
                 "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dose_score"] < 1e-5 and report["dvh_score"] < 1e-5
    assert len(report["patients"]) == 10
    assert set(report["patients"][0]) >= {"patient", "dose_error", "dvh_error", "n_metrics", "metrics"}


def test_cli_table_and_missing_prediction_message(validation_root, reference_predictions, tmp_path, capsys):
    args = ["evaluate", "--reference", str(validation_root), "--predictions", str(reference_predictions)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "pt_211" in table and "10 patients: dose score 0.000 Gy, DVH score 0.000 Gy" in table

    assert main(["evaluate", "--reference", str(validation_root), "--predictions", str(tmp_path)]) == 2
    assert "pt_201.csv does not exist" in capsys.readouterr().err
