"""``fedrt plan`` on a real OpenKBP patient: the target-dose hook, the output folder, and (slow) a full plan."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrt.commands import plan as plan_command
from models import loop
from models.checkpoint import save_checkpoint
from models.config import ModelConfig
from models.tasks import make_task
from protocols.errors import ConfigError, OutputError
from protocols.openkbp import load_openkbp_case, read_prediction
from runtime.planning.inputs import load_planning_patient
from runtime.planning.pipeline import contour_missing_oars, target_dose_for

REPO = Path(__file__).resolve().parents[1]


def parse(argv):
    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["plan", *argv])


def test_target_dose_reads_an_openkbp_dose_file(openkbp_root, protocol):
    patient = openkbp_root / "validation-pats" / "pt_201"
    planning = load_planning_patient(patient, protocol)
    dose, label = target_dose_for(planning, target_dose=patient / "dose.csv.gz")
    np.testing.assert_allclose(dose, planning.case.dose_gy, atol=1e-4)
    assert "dose.csv.gz" in label
    with pytest.raises(ConfigError, match="exactly one"):
        target_dose_for(planning)


def test_dose_model_prediction_is_the_dose_to_mimic(openkbp_root, protocol, tmp_path):
    planning = load_planning_patient(openkbp_root / "validation-pats" / "pt_201", protocol)
    case = planning.case
    config = ModelConfig(channels=(4, 8), strides=(2,), res_units=0, downsample=2, patch=(32, 32, 32))
    torch.manual_seed(0)
    task = make_task("dose", protocol, config)
    network = task.build_network()
    model = save_checkpoint(tmp_path / "dose.pt", task, network)
    dose, label = target_dose_for(planning, dose_model=str(model))
    np.testing.assert_array_equal(dose, loop.predict(network, task, case))
    assert "dose.pt" in label
    seg = make_task("seg", protocol, config)
    with pytest.raises(ValueError, match="give a dose model"):
        target_dose_for(planning, dose_model=str(save_checkpoint(tmp_path / "seg.pt", seg, seg.build_network())))


def test_seg_model_contours_only_the_missing_oars(openkbp_root, protocol, tmp_path):
    case, _ = load_openkbp_case(openkbp_root / "train-pats" / "pt_1", protocol)  # no Esophagus, no Larynx
    given = {name: mask.copy() for name, mask in case.structures.items()}
    config = ModelConfig(channels=(4, 8), strides=(2,), res_units=0, downsample=2, patch=(32, 32, 32))
    seg = make_task("seg", protocol, config)
    network = seg.build_network()
    with torch.no_grad():  # a constant large bias: every voxel is predicted inside every OAR
        for module in network.modules():
            if isinstance(module, torch.nn.Conv3d) and module.out_channels == len(protocol.oars):
                module.weight.zero_()
                module.bias.fill_(5.0)
    checkpoint = save_checkpoint(tmp_path / "seg.pt", seg, network)
    added, label = contour_missing_oars(case, str(checkpoint))
    assert added == ["Esophagus", "Larynx"]
    assert label.startswith("checkpoint sha256:")
    for name, mask in given.items():
        np.testing.assert_array_equal(case.structures[name], mask)


def test_plan_refuses_a_non_empty_output_folder_before_any_work(openkbp_root, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    patient = openkbp_root / "validation-pats" / "pt_201"
    args = parse([str(patient), "--target-dose", str(patient / "dose.csv.gz"), "--out", str(tmp_path)])
    with pytest.raises(OutputError, match=f"{tmp_path} exists and is not empty; choose another --out or delete it"):
        plan_command.run_plan(args)
    assert "[load]" not in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_plan_command_imports_no_heavy_library_until_it_runs():
    heavy = ("numpy", "torch", "scipy", "pydicom", "matplotlib", "pandas")
    code = ("import sys, argparse; from fedrt.commands import plan; "
            "plan.register(argparse.ArgumentParser().add_subparsers()); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_plan_command_writes_a_complete_plan(openkbp_root, tmp_path, capsys):
    patient = openkbp_root / "validation-pats" / "pt_201"
    out = tmp_path / "plan"
    assert plan_command.run_plan(parse([str(patient), "--target-dose", str(patient / "dose.csv.gz"),
                                        "--out", str(out)])) == 0
    summary = json.loads((out / "plan.json").read_text())
    assert summary["goals_met"]["plan"] >= summary["goals_met"]["target"]
    assert set(summary["timings_s"]) >= {"load", "target dose", "geometry", "matrix", "optimisation", "sequencing",
                                         "final dose", "export", "report"}
    dose = read_prediction(out / "plan_dose.csv")
    assert dose.max() > 60.0
    assert {p.name for p in (out / "dicom").iterdir()} >= {"RTPLAN.dcm", "RTDOSE.dcm", "RTSTRUCT.dcm"}
    assert (out / "report" / "report.html").is_file()
    assert "timing (s):" in capsys.readouterr().out
