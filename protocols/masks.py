"""Binary mask operations shared by the readers (one rule for "the largest connected part")."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected part of ``mask`` (a copy; empty stays empty)."""
    mask = np.asarray(mask, bool)
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.copy()
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
