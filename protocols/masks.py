"""Binary mask operations shared by the readers and the models (one rule for "the largest connected part")."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """The largest connected part of ``mask`` (a copy; empty stays empty). ``connectivity`` 1 joins voxels that
    share a face, 3 also those that share only an edge or a corner (a thin organ cut obliquely stays whole).
    """
    mask = np.asarray(mask, bool)
    labels, count = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, connectivity))
    if count <= 1:
        return mask.copy()
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
