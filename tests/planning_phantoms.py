"""Small synthetic phantoms for the planning tests: a water box and a water cylinder with a target and an OAR."""

from __future__ import annotations

import numpy as np

from protocols.case import Case
from protocols.protocol import Protocol, protocol_from_dict


def water_box(shape=(100, 40, 40), spacing=(2.5, 5.0, 5.0), air_rows: int = 20) -> Case:
    """Water below ``air_rows`` rows of air (axis 0 runs anterior -> posterior, so gantry 0 enters the surface)."""
    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[air_rows:] = 0.0
    return Case("water", ct, spacing)


def cylinder_case(shape=(48, 48, 24), spacing=(5.0, 5.0, 5.0)) -> tuple[Case, Protocol]:
    """A water cylinder (radius 100 mm) with a spherical target (Rx 50 Gy) and a small OAR beside it."""
    i, j, k = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    r_axial = np.hypot(i * spacing[0], j * spacing[1])
    body = r_axial <= 100.0
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    target = np.sqrt((i * spacing[0]) ** 2 + (j * spacing[1] - 15) ** 2 + (k * spacing[2]) ** 2) <= 25.0
    oar = (np.sqrt((i * spacing[0]) ** 2 + (j * spacing[1] + 30) ** 2 + (k * spacing[2]) ** 2) <= 12.0) & ~target
    case = Case("cylinder", ct, spacing, {"PTV": target, "Cord": oar}, possible_dose_mask=body)
    protocol = protocol_from_dict({
        "name": "test-cylinder", "fractions": 25,
        "grid": {"shape": list(shape), "spacing_mm": list(spacing)},
        "structures": [{"name": "Cord", "kind": "oar"}, {"name": "PTV", "kind": "target", "prescription_gy": 50.0}],
        "goals": [{"structure": "PTV", "metric": "D95", "op": ">=", "limit_rx": 1.0},
                  {"structure": "Cord", "metric": "D0.1cc", "op": "<=", "limit_gy": 30.0}],
    })
    return case, protocol
