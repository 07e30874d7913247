"""An ideal dose to mimic when no prediction exists (e.g. TG-119): each target at its prescription, falling off
exponentially with the distance outside it, zero outside the body.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from protocols.case import Case
from protocols.protocol import Protocol

FALLOFF_MM = 15.0


def ideal_dose(case: Case, protocol: Protocol, falloff_mm: float = FALLOFF_MM) -> np.ndarray:
    """Max over targets of ``Rx * exp(-distance / falloff)``, in Gy on the case grid."""
    dose = np.zeros(case.shape, dtype=np.float32)
    for name in protocol.targets:
        mask = case.mask(name)
        if not mask.any():
            continue
        distance = ndimage.distance_transform_edt(~mask, sampling=case.spacing_mm)
        rx = protocol.structure(name).prescription_gy
        dose = np.maximum(dose, (rx * np.exp(-distance / falloff_mm)).astype(np.float32))
    return np.where(case.dose_region(), dose, 0.0).astype(np.float32)
