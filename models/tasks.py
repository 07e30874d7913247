"""The two learning tasks: what each feeds the network, its loss, its native-grid output and its metrics.

The training loop is task-agnostic; everything that differs between dose prediction and segmentation is here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from models import encoding
from models.config import ModelConfig
from models.networks import build_unet
from protocols.case import Case
from protocols.evaluation import EvaluationResult, PatientScore, evaluate_dose
from protocols.metrics import dice, hausdorff95_mm
from protocols.protocol import Protocol

TASKS = ("dose", "seg")


@dataclass
class Prepared:
    """A case ready for training: working-grid tensors (channel-first) plus where they sit natively."""

    patient_id: str
    image: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    labelled: torch.Tensor
    crop: encoding.Crop


class Task(ABC):
    """Common shape of a task; subclasses fill in the channels, targets, loss and metrics."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    ct_channels: ClassVar[tuple[int, ...]] = (0,)  # input channels holding CT: padded with air, jittered

    def __init__(self, protocol: Protocol, model: ModelConfig):
        self.protocol = protocol
        self.model_config = model

    @property
    @abstractmethod
    def in_channels(self) -> int:
        """Implement in each task."""

    @property
    @abstractmethod
    def out_channels(self) -> int:
        """Implement in each task."""

    def build_network(self) -> nn.Module:
        return build_unet(self.in_channels, self.out_channels, self.model_config)

    def crop(self, case: Case) -> encoding.Crop:
        return encoding.plan_crop(encoding.body_mask(case), self.model_config.downsample, self.model_config.divisor)

    @abstractmethod
    def inputs(self, case: Case) -> np.ndarray:
        """Implement in each task."""

    @abstractmethod
    def prepare(self, case: Case) -> Prepared:
        """Implement in each task."""

    @abstractmethod
    def permutations(self) -> dict[str, list[int]]:
        """Channel reorderings of image and target under a left-right flip."""

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Implement in each task."""

    @abstractmethod
    def postprocess(self, output: torch.Tensor, case: Case, crop: encoding.Crop):
        """Implement in each task."""

    @abstractmethod
    def score(self, case: Case, prediction):
        """Score one native-grid prediction against the case's reference."""

    @abstractmethod
    def summarize(self, scores: list) -> dict[str, float]:
        """Aggregate per-case scores into the task's metrics over a set of cases."""


class DoseTask(Task):
    """Predict dose in Gy inside the possible-dose mask, trained with L1 (the OpenKBP dose score is MAE)."""

    name = "dose"
    primary_metric = "dose_score"
    higher_is_better = False

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
            raise ValueError(f"patient {case.patient_id} ({case.source}) has no dose: it cannot train a dose model")
        crop = self.crop(case)
        scaled = case.dose_gy[None] / self.protocol.max_prescription_gy
        body = encoding.body_mask(case)[None]
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
        return (np.clip(dose, 0.0, None) * encoding.body_mask(case)).astype(np.float32)

    def score(self, case: Case, prediction: np.ndarray) -> PatientScore:
        return evaluate_dose(case, prediction, self.protocol)

    def summarize(self, scores: list[PatientScore]) -> dict[str, float]:
        """The OpenKBP dose score and DVH score (pooled over all patients' metrics, as the challenge does)."""
        result = EvaluationResult(scores)
        return {"dose_score": result.dose_score, "dvh_score": result.dvh_score}


class SegTask(Task):
    """Segment the protocol's OARs from CT, one sigmoid channel each (multi-label), Dice + BCE loss.

    Structures that were not contoured for a patient are not "absent": their channels get no loss.
    """

    name = "seg"
    primary_metric = "dice_mean"
    higher_is_better = True
    threshold = 0.5
    ct_channels = (0, 1)

    def __init__(self, protocol: Protocol, model: ModelConfig):
        super().__init__(protocol, model)
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)

    @property
    def in_channels(self) -> int:
        return len(self.ct_channels)

    @property
    def out_channels(self) -> int:
        return len(self.protocol.oars)

    def crop(self, case: Case) -> encoding.Crop:
        """The whole patient: OpenKBP's possible-dose mask box leaves out up to 80% of a brainstem."""
        return encoding.plan_crop(case.tissue_mask(), self.model_config.downsample,
                                  self.model_config.divisor)

    def inputs(self, case: Case) -> np.ndarray:
        return encoding.seg_inputs(case)

    def prepare(self, case: Case) -> Prepared:
        crop = self.crop(case)
        masks = np.stack([case.mask(n) for n in self.protocol.oars]).astype(np.float32)
        labelled = torch.tensor([float(n in case.structures) for n in self.protocol.oars])
        target = (encoding.to_working(masks, crop) >= 0.5).float()
        fg = target.amax(0, keepdim=True)
        return Prepared(case.patient_id, encoding.to_working(self.inputs(case), crop), target, fg, labelled, crop)

    def permutations(self) -> dict[str, list[int]]:
        return {"image": list(self.ct_channels), "target": encoding.oar_channel_permutation(self.protocol),
                "mask": [0]}

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Dice over the organs present in each patch (an absent organ's Dice only teaches "predict nothing",
        which collapses small organs), BCE over every contoured organ.
        """
        labelled = batch["labelled"]
        present = labelled * (batch["target"].flatten(2).amax(-1) > 0)
        dice = self.dice(output, batch["target"]).reshape(labelled.shape)
        bce = F.binary_cross_entropy_with_logits(output, batch["target"], reduction="none").flatten(2).mean(-1)
        return ((dice * present).sum() / present.sum().clamp_min(1.0)
                + (bce * labelled).sum() / labelled.sum().clamp_min(1.0))

    def postprocess(self, output: torch.Tensor, case: Case, crop: encoding.Crop) -> dict[str, np.ndarray]:
        """Boolean masks on the native grid, one per OAR."""
        probabilities = encoding.to_native(torch.sigmoid(output), crop)
        return {name: probabilities[i] >= self.threshold for i, name in enumerate(self.protocol.oars)}

    def score(self, case: Case, prediction: dict[str, np.ndarray]) -> dict[str, float]:
        """Dice per contoured OAR, and HD95 in mm where the prediction is not empty (Dice already says 0)."""
        out: dict[str, float] = {}
        for name in self.protocol.oars:
            reference = case.structures.get(name)
            if reference is None or not reference.any():
                continue
            out[f"dice_{name}"] = dice(prediction[name], reference)
            if prediction[name].any():
                out[f"hd95_mm_{name}"] = hausdorff95_mm(prediction[name], reference, case.spacing_mm)
        return out

    def summarize(self, scores: list[dict[str, float]]) -> dict[str, float]:
        """Per-structure means over the cases that have the structure; ``dice_mean`` averages the OARs."""
        keys = sorted({k for row in scores for k in row})
        out = {k: float(np.mean([row[k] for row in scores if k in row])) for k in keys}
        dices = [v for k, v in out.items() if k.startswith("dice_")]
        out["dice_mean"] = float(np.mean(dices)) if dices else float("nan")
        return out


def make_task(name: str, protocol: Protocol, model: ModelConfig) -> Task:
    """The task called ``name`` (``dose`` or ``seg``) for a protocol and network configuration."""
    classes = {"dose": DoseTask, "seg": SegTask}
    if name not in classes:
        raise ValueError(f"unknown task {name!r}; choose task=dose or task=seg")
    return classes[name](protocol, model)
