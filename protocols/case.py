"""A patient case: CT, structures, dose and geometry as typed numpy arrays with an explicit axis order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from protocols.errors import DataError
from protocols.masks import largest_component

# Index order of every array in a case, as in the published OpenKBP data: axis 0 runs anterior -> posterior
# (image rows), axis 1 patient right -> left (image columns), axis 2 superior -> inferior (slices).
AXES: tuple[str, str, str] = ("anterior->posterior", "right->left", "superior->inferior")
# Denser than this is patient (or couch), below it air: the outline when no EXTERNAL ROI or dose mask is given.
TISSUE_HU = -500.0
# An MR voxel is patient where the lightly smoothed signal exceeds this fraction of the image's 99th percentile (fat
# or marrow): about half the soft-tissue signal, so the outline sits where a partial-volume edge is half tissue; air
# gives only noise (cortical bone and air passages inside the outline are dark too: they are filled in).
MR_BODY_FRACTION = 0.3
MR_BODY_CLOSING = 2  # voxels: gaps a dark bone or a partial-volume rim leaves in the outline are bridged
MR_BODY_SMOOTHING = 0.5  # Gaussian sigma in voxels against single noisy voxels; more would widen the outline


@dataclass
class Case:
    """One patient on one grid: ``ct_hu`` float32 in HU, boolean masks, ``dose_gy`` float32 in Gy (or None), and
    ``mr`` float32 in arbitrary units on the same grid (or None), the MR paired with the CT.
    """

    patient_id: str
    ct_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    structures: dict[str, np.ndarray] = field(default_factory=dict)
    possible_dose_mask: np.ndarray | None = None
    dose_gy: np.ndarray | None = None
    source: Path | None = None
    mr: np.ndarray | None = None

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

    def mr_body(self) -> np.ndarray:
        """The patient's outline on the case's MR (:func:`mr_outline`, the one body rule of every MR model)."""
        if self.mr is None:
            raise DataError(f"patient {self.patient_id} ({self.source}) has no MR: add mr.csv beside ct.csv, or "
                            "import the MR series with the CT")
        return mr_outline(self.mr)


def mr_outline(mr: np.ndarray) -> np.ndarray:
    """The patient's outline on an MR (any units): smoothed signal above ``MR_BODY_FRACTION`` of the 99th percentile,
    the largest connected part, closed by ``MR_BODY_CLOSING`` voxels, each axial slice's holes (dark bone, air
    passages) filled. Also for an MR without a CT (MRI-only planning).
    """
    smooth = ndimage.gaussian_filter(np.asarray(mr, np.float32), MR_BODY_SMOOTHING)
    body = smooth > MR_BODY_FRACTION * float(np.percentile(smooth, 99))
    body = largest_component(body)
    # close gaps in a thin bright rim (scalp over dark skull) so that what it encloses is filled; the grid's
    # edges are extended first, as the patient goes on beyond the scan
    margin = MR_BODY_CLOSING
    body = ndimage.binary_closing(np.pad(body, margin, mode="edge"), iterations=margin)[
        margin:-margin, margin:-margin, margin:-margin]
    for k in range(body.shape[2]):  # axis 2 runs through the axial slices (``AXES``)
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body
