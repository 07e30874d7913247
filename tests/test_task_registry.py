"""A task is one class in one place: the task below (the body outline from CT) is defined only in this file, and
the one loop trains it, ``fedrt predict`` writes its predictions, and the baselines and ``fedrt compare`` report
its metrics, with no edit anywhere else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs.compose import compose
from fedrt import cli
from models import encoding
from models.centralized import data_config, run_training
from models.checkpoint import load_checkpoint
from models.tasks import Prepared, Task, task_class
from protocols.case import Case
from protocols.errors import ConfigError
from protocols.files import atomic_write
from protocols.metrics import dice
from protocols.splits import select_patients
from simulation.baselines import run_baselines
from simulation.compare import compare


class BodyTask(Task[np.ndarray, float]):
    """Outline the body from CT (one sigmoid channel), scored by Dice against the tissue mask."""

    name = "body"
    title = "body outline"
    primary_metric = "body_dice"
    higher_is_better = True
    site_metrics = ("body_dice",)

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def out_channels(self) -> int:
        return 1

    def inputs(self, case: Case) -> np.ndarray:
        return encoding.seg_inputs(case)[:1]

    def prepare(self, case: Case) -> Prepared:
        crop = self.crop(case)
        body = (encoding.to_working(case.tissue_mask()[None].astype(np.float32), crop) >= 0.5).float()
        return Prepared(case.patient_id, encoding.to_working(self.inputs(case), crop), body, body, torch.ones(1), crop)

    def permutations(self) -> dict[str, list[int]]:
        return {"image": [0], "target": [0], "mask": [0]}

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output, batch["target"])

    def postprocess(self, output: torch.Tensor, case: Case, crop: encoding.Crop) -> np.ndarray:
        return encoding.to_native(torch.sigmoid(output), crop)[0] >= 0.5

    def score(self, case: Case, prediction: np.ndarray) -> float:
        return dice(prediction, case.tissue_mask())

    def summarize(self, scores: list[float]) -> dict[str, float]:
        return {"body_dice": float(np.mean(scores))}

    def write_prediction(self, case: Case, prediction: np.ndarray, out_dir: Path) -> Path:
        path = out_dir / f"{case.patient_id}.npy"
        with open(atomic_write(path, b""), "wb") as handle:
            np.save(handle, prediction)
        return path


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return compose(["preset=smoke", "task.name=body", "data.phantom_shape=null", "data.phantoms=4",
                    "data.val_fraction=0.5", "train.epochs=1", "train.steps_per_epoch=2", "num_sites=2",
                    "rounds=1", "federation.local_epochs=1", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                    f"output={tmp_path / 'body.pt'}"])


def test_a_task_defined_in_one_place_trains_predicts_and_is_compared(config, tmp_path):
    assert task_class("body") is BodyTask
    outcome = run_training(config, progress=False)
    assert 0.0 <= outcome.validation["body_dice"] <= 1.0
    assert isinstance(load_checkpoint(outcome.checkpoint).task, BodyTask)

    patient = select_patients(data_config(config), load_checkpoint(outcome.checkpoint).task.protocol).val[0]
    assert cli.main(["predict", "--model", str(outcome.checkpoint), "--data", str(patient),
                     "--out", str(tmp_path / "predicted")]) == 0
    assert np.load(tmp_path / "predicted" / f"{patient.name}.npy").dtype == bool

    run_baselines(config, ("centralized",), progress=False)
    table, _ = compare(config)
    assert "body_dice" in table and "| centralized all |" in table and "higher is better" in table


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"choose task=.*dose.*seg"):
        task_class("nope")
