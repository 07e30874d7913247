"""CT number (HU) to relative electron density, by a configurable piecewise-linear calibration table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError

# A typical CT calibration (see docs: rt-dicom-primer); scanner-specific tables replace it.
DEFAULT_HU = (-1000.0, -100.0, 0.0, 100.0, 1000.0, 3000.0)
DEFAULT_RED = (0.0, 0.93, 1.0, 1.06, 1.55, 2.6)


@dataclass(frozen=True)
class DensityTable:
    """HU -> relative electron density (water = 1), linear between the points, clamped outside."""

    hu: tuple[float, ...] = DEFAULT_HU
    relative_density: tuple[float, ...] = DEFAULT_RED

    def __post_init__(self) -> None:
        if len(self.hu) != len(self.relative_density) or len(self.hu) < 2:
            raise ConfigError("density table: give at least two (HU, density) points, as many HU as densities")
        if np.any(np.diff(self.hu) <= 0):
            raise ConfigError(f"density table: HU points must increase strictly, got {self.hu}")
        if np.any(np.asarray(self.relative_density) < 0):
            raise ConfigError(f"density table: densities must be >= 0, got {self.relative_density}")

    def __call__(self, ct_hu: np.ndarray) -> np.ndarray:
        """Relative electron density of each voxel, float32, same shape as ``ct_hu``."""
        return np.interp(ct_hu, self.hu, self.relative_density).astype(np.float32)


def parse_density_table(text: str) -> DensityTable:
    """Read ``HU:density,HU:density,...`` (the ``--density-table`` option) into a table."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        hu, red = zip(*((float(a), float(b)) for a, b in pairs), strict=True)
    except ValueError as exc:
        raise ConfigError(f"density table {text!r}: expected 'HU:density,HU:density,...' ({exc})") from exc
    return DensityTable(tuple(hu), tuple(red))
