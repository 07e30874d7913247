"""A patient case: CT, structures, dose and geometry as typed numpy arrays with an explicit axis order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Index order of every array in a case, as in the published OpenKBP data: axis 0 runs anterior -> posterior
# (image rows), axis 1 patient right -> left (image columns), axis 2 superior -> inferior (slices).
AXES: tuple[str, str, str] = ("anterior->posterior", "right->left", "superior->inferior")
# Denser than this is patient (or couch), below it air: the outline when no EXTERNAL ROI or dose mask is given.
TISSUE_HU = -500.0


@dataclass
class Case:
    """One patient on one grid: ``ct_hu`` float32 in HU, boolean masks, ``dose_gy`` float32 in Gy (or None)."""

    patient_id: str
    ct_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    structures: dict[str, np.ndarray] = field(default_factory=dict)
    possible_dose_mask: np.ndarray | None = None
    dose_gy: np.ndarray | None = None
    source: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.ct_hu.shape)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    def tissue_mask(self) -> np.ndarray:
        """Everything denser than ``TISSUE_HU``: the patient (and any couch), whatever the dose covers."""
        return self.ct_hu > TISSUE_HU

    def dose_region(self) -> np.ndarray:
        """The voxels that can receive dose, the one rule of every model and planner: the possible-dose mask when
        it holds any voxel, else the tissue.
        """
        if self.possible_dose_mask is not None and self.possible_dose_mask.any():
            return self.possible_dose_mask
        return self.tissue_mask()

    def mask(self, name: str) -> np.ndarray:
        """The structure's mask, or an all-false mask when the structure was not contoured."""
        found = self.structures.get(name)
        return found if found is not None else np.zeros(self.shape, dtype=bool)
