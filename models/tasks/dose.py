"""Dose prediction: CT, OARs, targets by prescription and the possible-dose mask in; dose in Gy out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import encoding
from models.tasks.base import Prepared, Task
from protocols.case import Case
from protocols.errors import DataError
from protocols.evaluation import EvaluationResult, PatientScore, evaluate_dose
from protocols.openkbp import write_prediction


class DoseTask(Task[np.ndarray, PatientScore]):
    """Predict dose in Gy inside the possible-dose mask, trained with L1 (the OpenKBP dose score is MAE)."""

    name = "dose"
    title = "dose"
    primary_metric = "dose_score"
    higher_is_better = False
    site_metrics = ("dose_score", "dvh_score")

    @property
    def in_channels(self) -> int:
        return 3 + len(self.protocol.oars)

    @property
    def out_channels(self) -> int:
        return 1

    def inputs(self, case: Case) -> np.ndarray:
        return encoding.dose_inputs(case, self.protocol)

    def prepare(self, case: Case) -> Prepared:
        if case.dose_gy is None:
            raise DataError(f"patient {case.patient_id} ({case.source}) has no dose: it cannot train a dose model")
        crop = self.crop(case)
        scaled = case.dose_gy[None] / self.protocol.max_prescription_gy
        body = case.dose_region()[None]
        return Prepared(case.patient_id, encoding.to_working(self.inputs(case), crop),
                        encoding.to_working(scaled, crop), encoding.to_working(body, crop),
                        torch.ones(1), crop)

    def permutations(self) -> dict[str, list[int]]:
        return {"image": encoding.dose_channel_permutation(self.protocol), "target": [0], "mask": [0]}

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["mask"]
        return (torch.abs(output - batch["target"]) * mask).sum() / mask.sum().clamp_min(1.0)

    def postprocess(self, output: torch.Tensor, case: Case, crop: encoding.Crop) -> np.ndarray:
        """Dose in Gy on the native grid, zero outside the possible-dose mask."""
        dose = encoding.to_native(output * self.protocol.max_prescription_gy, crop)[0]
        return (np.clip(dose, 0.0, None) * case.dose_region()).astype(np.float32)

    def score(self, case: Case, prediction: np.ndarray) -> PatientScore:
        return evaluate_dose(case, prediction, self.protocol)

    def summarize(self, scores: list[PatientScore]) -> dict[str, float]:
        """The OpenKBP dose score and DVH score (pooled over all patients' metrics, as the challenge does)."""
        result = EvaluationResult(scores)
        return {"dose_score": result.dose_score, "dvh_score": result.dvh_score}

    def write_prediction(self, case: Case, prediction: np.ndarray, out_dir: Path) -> Path:
        """An OpenKBP prediction file ``<patient>.csv``."""
        return write_prediction(out_dir / f"{case.patient_id}.csv", prediction)
