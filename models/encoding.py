"""Turn a case into network inputs and targets, and network outputs back into native-grid arrays.

Everything a task feeds the network is built here once per case (at the model's resolution, cropped to the
patient), so an epoch only crops and augments tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from protocols.case import Case
from protocols.protocol import Protocol

CT_CLIP_HU = (-1000.0, 2000.0)
CT_SCALE_HU = 1000.0
SOFT_TISSUE_HU = (-160.0, 240.0)  # a soft-tissue window: parotids, esophagus and larynx differ by tens of HU


def ct_channel(ct_hu: np.ndarray) -> np.ndarray:
    """CT scaled to about [-1, 2]: air -1, water 0, dense bone 1-2."""
    return (np.clip(ct_hu, *CT_CLIP_HU) / CT_SCALE_HU).astype(np.float32)


def dose_inputs(case: Case, protocol: Protocol) -> np.ndarray:
    """CT, one channel per OAR, targets encoded by prescription / max prescription, possible-dose mask."""
    rx = protocol.prescriptions_gy
    target = np.zeros(case.shape, np.float32)
    for name in protocol.targets:
        target = np.maximum(target, case.mask(name) * np.float32(rx[name] / protocol.max_prescription_gy))
    pdm = case.dose_region()
    channels = [ct_channel(case.ct_hu), *(case.mask(n).astype(np.float32) for n in protocol.oars),
                target, pdm.astype(np.float32)]
    return np.stack(channels)


def soft_tissue_channel(ct_hu: np.ndarray) -> np.ndarray:
    """CT in the soft-tissue window scaled to [-1, 1] (air and bone saturate), so organ contrast is not tiny."""
    low, high = SOFT_TISSUE_HU
    return ((np.clip(ct_hu, low, high) - (low + high) / 2) / ((high - low) / 2)).astype(np.float32)


def seg_inputs(case: Case) -> np.ndarray:
    """The CT twice: the wide window (bone, air) and the soft-tissue window (organ boundaries)."""
    return np.stack([ct_channel(case.ct_hu), soft_tissue_channel(case.ct_hu)])


def mr_channel(mr: np.ndarray, body: np.ndarray) -> np.ndarray:
    """An MR divided by the median of its body's signal (mostly soft tissue: about 1 on any scanner and scale),
    clipped to [0, 5]: MR intensities have no absolute unit.
    """
    mr = np.asarray(mr, np.float32)
    inside = mr[body] if body.any() else mr
    scale = float(np.median(inside)) or 1.0
    return np.clip(mr / scale, 0.0, 5.0).astype(np.float32)


def dose_channel_permutation(protocol: Protocol) -> list[int]:
    """Channel order after a left-right flip of dose inputs: mirrored OAR channels swap places."""
    names = ["ct", *protocol.oars, "targets", "possible_dose_mask"]
    return _swap(names, protocol.mirror_pairs)


def oar_channel_permutation(protocol: Protocol) -> list[int]:
    return _swap(list(protocol.oars), protocol.mirror_pairs)


def _swap(names: list[str], pairs: dict[str, str]) -> list[int]:
    return [names.index(pairs.get(n, n)) for n in names]


@dataclass
class Crop:
    """Where a cropped, resampled working volume sits in the native grid, to paste predictions back."""

    native_shape: tuple[int, int, int]
    factor: int
    start: tuple[int, int, int]
    stop: tuple[int, int, int]


def plan_crop(mask: np.ndarray, factor: int, divisor: int, margin: int = 2) -> Crop:
    """Bounding box of ``mask`` on the working grid, grown by a margin and to a multiple of ``divisor``."""
    work_shape = tuple(s // factor for s in mask.shape)
    idx = np.argwhere(mask)
    if idx.size == 0:
        lo, hi = np.zeros(3, int), np.array(work_shape)
    else:
        lo = np.maximum(idx.min(0) // factor - margin, 0)
        hi = np.minimum(idx.max(0) // factor + 1 + margin, work_shape)
    start, stop = [], []
    for a, b, n in zip(lo, hi, work_shape, strict=True):
        size = min(-(-(b - a) // divisor) * divisor, n - n % divisor or n)
        a = int(min(max((a + b - size) // 2, 0), n - size))
        start.append(a)
        stop.append(a + size)
    return Crop(tuple(mask.shape), factor, tuple(start), tuple(stop))


def to_working(array: np.ndarray, crop: Crop) -> torch.Tensor:
    """Channel-first native array -> average-pooled to the working resolution and cropped."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if crop.factor > 1:
        tensor = F.avg_pool3d(tensor[None], crop.factor)[0]
    (a0, a1, a2), (b0, b1, b2) = crop.start, crop.stop
    return tensor[:, a0:b0, a1:b1, a2:b2].contiguous()


def to_native(tensor: torch.Tensor, crop: Crop) -> np.ndarray:
    """Channel-first working-grid output -> pasted into the full grid and resampled to the native shape."""
    work_shape = tuple(s // crop.factor for s in crop.native_shape)
    full = torch.zeros((tensor.shape[0], *work_shape), dtype=tensor.dtype)
    (a0, a1, a2), (b0, b1, b2) = crop.start, crop.stop
    full[:, a0:b0, a1:b1, a2:b2] = tensor
    if crop.factor > 1:
        full = F.interpolate(full[None], size=crop.native_shape, mode="trilinear", align_corners=False)[0]
    return full.numpy()
