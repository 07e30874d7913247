"""Synthetic CT: an MR (and the body it outlines) in, a CT in HU out, so that an MR-only patient can be planned.

Trained with L1 in HU inside the body (the MAE SynthRAD ranks by), scored with SynthRAD's MAE, PSNR and SSIM
inside the same body (``protocols.metrics``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import encoding
from models.tasks.base import Prepared, Task
from protocols.case import Case
from protocols.files import atomic_file
from protocols.metrics import sct_mae_hu, sct_psnr_db, sct_ssim
from protocols.openkbp import CT_OFFSET, write_sparse_csv

AIR_HU = encoding.CT_CLIP_HU[0]


class SyntheticCTTask(Task[np.ndarray, dict[str, float]]):
    """Predict the CT in HU inside the MR's body outline (air outside it) from the intensity-normalised MR."""

    name = "sct"
    title = "synthetic CT"
    primary_metric = "mae_hu"
    higher_is_better = False
    site_metrics = ("mae_hu", "psnr_db", "ssim")
    ct_channels = ()  # no CT goes in: the MR channel pads with 0 (no signal), like air on an MR

    @property
    def in_channels(self) -> int:
        return 2

    @property
    def out_channels(self) -> int:
        return 1

    def crop(self, case: Case) -> encoding.Crop:
        """The MR's body outline: an MR-only patient has no CT to find the body on."""
        return encoding.plan_crop(case.mr_body(), self.model_config.downsample, self.model_config.divisor)

    def inputs(self, case: Case) -> np.ndarray:
        body = case.mr_body()
        return np.stack([encoding.mr_channel(case.mr, body), body.astype(np.float32)])

    def prepare(self, case: Case) -> Prepared:
        crop = self.crop(case)
        target = (np.clip(case.ct_hu, *encoding.CT_CLIP_HU) - AIR_HU) / encoding.CT_SCALE_HU  # air 0, as padding
        return Prepared(case.patient_id, encoding.to_working(self.inputs(case), crop),
                        encoding.to_working(target[None].astype(np.float32), crop),
                        encoding.to_working(case.mr_body()[None], crop), torch.ones(1), crop)

    def permutations(self) -> dict[str, list[int]]:
        return {"image": [0, 1], "target": [0], "mask": [0]}

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean absolute error inside the body, in units of ``CT_SCALE_HU``."""
        mask = batch["mask"]
        return (torch.abs(output - batch["target"]) * mask).sum() / mask.sum().clamp_min(1.0)

    def postprocess(self, output: torch.Tensor, case: Case, crop: encoding.Crop) -> np.ndarray:
        """The synthetic CT in HU on the native grid: air outside the body."""
        hu = encoding.to_native(output * encoding.CT_SCALE_HU + AIR_HU, crop)[0]
        return np.where(case.mr_body(), np.clip(hu, *encoding.CT_CLIP_HU), AIR_HU).astype(np.float32)

    def score(self, case: Case, prediction: np.ndarray) -> dict[str, float]:
        body = case.mr_body()
        return {"mae_hu": sct_mae_hu(case.ct_hu, prediction, body),
                "psnr_db": sct_psnr_db(case.ct_hu, prediction, body), "ssim": sct_ssim(case.ct_hu, prediction, body)}

    def summarize(self, scores: list[dict[str, float]]) -> dict[str, float]:
        """Each metric's mean over the patients, as SynthRAD reports them."""
        return {key: float(np.mean([row[key] for row in scores])) for key in self.site_metrics}

    def write_prediction(self, case: Case, prediction: np.ndarray, out_dir: Path) -> Path:
        """``<patient>.csv``: the synthetic CT in the layout of an OpenKBP ``ct.csv`` (HU + 1000, air 0)."""
        path = out_dir / f"{case.patient_id}.csv"
        with atomic_file(path) as tmp:
            write_sparse_csv(tmp, np.round(prediction) + CT_OFFSET, False, "%.1f")
        return path
