"""OAR segmentation: CT in, one mask per OAR of the protocol out (multi-label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from models import encoding
from models.config import ModelConfig
from models.tasks.base import Prepared, Task
from protocols.case import Case
from protocols.files import staged_folder
from protocols.metrics import dice, hausdorff95_mm
from protocols.openkbp import write_sparse_csv
from protocols.protocol import Protocol


class SegTask(Task[dict[str, np.ndarray], dict[str, float]]):
    """Segment the protocol's OARs from CT, one sigmoid channel each (multi-label), Dice + BCE loss.

    Structures that were not contoured for a patient are not "absent": their channels get no loss.
    """

    name = "seg"
    title = "segmentation"
    primary_metric = "dice_mean"
    higher_is_better = True
    site_metrics = ("dice_mean",)
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
        which collapses small organs), BCE over every contoured organ. ``batch["labelled"]`` is 0 for an organ
        not contoured and otherwise its weight (1, or ``loop.organ_weights`` under ``train.balance_organs``).
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

    def write_prediction(self, case: Case, prediction: dict[str, np.ndarray], out_dir: Path) -> Path:
        """One OpenKBP mask file per OAR (``,data`` header, ``flat_index,`` rows); the patient folder atomically."""
        patient_dir = out_dir / case.patient_id
        with staged_folder(patient_dir, replace=True) as staging:
            for name, mask in prediction.items():
                write_sparse_csv(staging / f"{name}.csv", mask, True, "%g")
        return patient_dir
