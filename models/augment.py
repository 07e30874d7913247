"""Patch sampling and augmentation as MONAI dictionary transforms over the keys image, target and mask."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandomizableTransform,
)

KEYS = ("image", "target", "mask")
# Spatial axis 1 runs patient right -> left (protocols.case.AXES); channel-first tensors put it at dim 2.
LATERAL_DIM = 2


class RandLateralFlipd(RandomizableTransform, MapTransform):
    """Flip left-right and swap mirrored channels (LeftParotid <-> RightParotid) so labels stay anatomical."""

    def __init__(self, permutations: Mapping[str, Sequence[int]], prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, list(permutations))
        self.permutations = {k: list(v) for k, v in permutations.items()}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize(None)
        out = dict(data)
        if self._do_transform:
            for key, perm in self.permutations.items():
                out[key] = torch.flip(out[key], dims=(LATERAL_DIM,))[perm]
        return out


class RandIntensityJitterd(RandomizableTransform, MapTransform):
    """Scale and shift the CT channels slightly, so the model tolerates scanner calibration differences."""

    def __init__(self, key: str, amount: float, channels: Sequence[int] = (0,), prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [key])
        self.amount = amount
        self.channels = list(channels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize(None)
        out = dict(data)
        if self._do_transform and self.amount > 0:
            scale, shift = 1 + self.R.uniform(-self.amount, self.amount), self.R.uniform(-self.amount, self.amount)
            image = out[self.keys[0]].clone()
            image[self.channels] = image[self.channels] * scale + shift
            out[self.keys[0]] = image
        return out


def training_transform(patch: Sequence[int], permutations: Mapping[str, Sequence[int]], flip: bool,
                       jitter: float, seed: int, class_ratios: Sequence[float] | None = None,
                       ct_channels: Sequence[int] = (0,)) -> Compose:
    """Crop a patch, then flip and jitter. The crop is centred on foreground two times in three; with
    ``class_ratios`` (segmentation: background first, then each organ, see ``dataset_class_ratios``) it is
    centred on each class in those proportions, among the classes the case has.
    """
    if class_ratios is not None:
        crop = RandCropByLabelClassesd(keys=list(KEYS), label_key="fg", spatial_size=list(patch),
                                       ratios=list(class_ratios), num_classes=len(class_ratios), num_samples=1,
                                       indices_key="class_idx", allow_smaller=True, warn=False)
    else:
        crop = RandCropByPosNegLabeld(keys=list(KEYS), label_key="fg", spatial_size=list(patch), pos=2, neg=1,
                                      num_samples=1, fg_indices_key="fg_idx", bg_indices_key="bg_idx",
                                      allow_smaller=True)
    transforms = [crop, RandIntensityJitterd("image", jitter, ct_channels)]
    if flip:
        transforms.append(RandLateralFlipd(permutations))
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose


def class_indices(target: torch.Tensor) -> list[np.ndarray]:
    """Flat voxel indices of the background and of each target channel, for the class-balanced sampler."""
    flat = target.reshape(target.shape[0], -1).numpy() > 0
    return [np.flatnonzero(~flat.any(0)), *(np.flatnonzero(channel) for channel in flat)]


def dataset_class_ratios(class_idx: Sequence[Sequence[np.ndarray]]) -> list[float]:
    """Patch-centre ratios (background first) under which every organ is the centre equally often over the
    whole dataset: an organ contoured in few cases (esophagus, larynx) gets a larger share in those cases, an
    organ in every case twice the background's. ``class_idx`` holds each case's ``class_indices``.
    """
    counts = np.array([[len(ix) > 0 for ix in case[1:]] for case in class_idx]).sum(0)
    organs = np.where(counts > 0, 2.0 * counts.max() / np.maximum(counts, 1), 0.0)
    return [1.0, *organs.tolist()]


def foreground_indices(fg: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of foreground and background voxels, computed once per case for the crop sampler."""
    flat = fg.reshape(-1).numpy() > 0
    return np.flatnonzero(flat), np.flatnonzero(~flat)
