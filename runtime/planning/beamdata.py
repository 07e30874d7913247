"""Tabulated 6 MV photon beam data: depth-dose components and radial lateral kernels of a pencil beam.

Source: the generic 6 MV machine of matRad, as shipped (BSD-3-Clause) by pyRadPlan 0.5.0
(``data/machines/photons_Generic.mat``), exported by ``benchmarks/export_pyradplan_beamdata.py`` into
``data/photon_6mv_kernels.csv``. The model is the kernel decomposition of Bortfeld, Schlegel & Rhein, "Decomposition
of pencil beam kernels for fast dose calculations in three-dimensional treatment planning", Med. Phys. 20(2):311-318
(1993): the dose of a pencil beam at radiological depth z and lateral radius r is
``sum_c beta_c/(beta_c - m) (exp(-m z) - exp(-beta_c z)) K_c(r)``, K_c tabulated (1/mm^2) every 0.5 mm for source-
surface distances 500-1000 mm. Its central-axis depth dose for a 10 x 10 cm field at SSD 100 cm has d_max about
14 mm and 66-67 % at 10 cm, as published 6 MV data (tested in tests/test_planning_engine.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from protocols.errors import DataError

DATA_FILE = Path(__file__).with_name("data") / "photon_6mv_kernels.csv"
# The kernels' radial sampling; their r = 0 value stands for the central 0.5 x 0.5 mm^2 cell.
KERNEL_SAMPLING_MM = 0.5


@dataclass(frozen=True)
class PhotonBeamData:
    """One photon energy's pencil-beam data (lengths in mm)."""

    m_per_mm: float
    betas_per_mm: np.ndarray
    sad_mm: float
    penumbra_fwhm_mm: float
    kernel_ssd_mm: np.ndarray
    kernel_radius_mm: np.ndarray
    kernels: np.ndarray  # (n_ssd, 3, n_radius), 1/mm^2

    def depth_components(self, depth_mm: np.ndarray) -> np.ndarray:
        """The three depth-dose components at radiological depths, shape ``(3, *depth.shape)``."""
        z = np.maximum(np.asarray(depth_mm, dtype=np.float64), 0.0)
        b = self.betas_per_mm.reshape((3,) + (1,) * z.ndim)
        m = self.m_per_mm
        return (b / (b - m) * (np.exp(-m * z) - np.exp(-b * z))).astype(np.float32)

    def kernels_at_ssd(self, ssd_mm: float) -> np.ndarray:
        """The radial kernels, shape ``(3, n_radius)``, linearly interpolated between tabulated SSDs."""
        ssd = float(np.clip(ssd_mm, self.kernel_ssd_mm[0], self.kernel_ssd_mm[-1]))
        i = int(np.clip(np.searchsorted(self.kernel_ssd_mm, ssd) - 1, 0, len(self.kernel_ssd_mm) - 2))
        f = (ssd - self.kernel_ssd_mm[i]) / (self.kernel_ssd_mm[i + 1] - self.kernel_ssd_mm[i])
        return (1 - f) * self.kernels[i] + f * self.kernels[i + 1]

    @property
    def kernel_range_mm(self) -> float:
        return float(self.kernel_radius_mm[-1])

    def pixel_kernels(self, ssd_mm: float, pixel_mm: float, radius_mm: float | None = None) -> np.ndarray:
        """Kernel mass per square pixel of side ``pixel_mm`` (an odd multiple of 0.5 mm), centred, (3, n, n).

        Each pixel sums the tabulated kernel over its 0.5 mm cells, the sampling the data were made for.
        """
        sub = round(pixel_mm / KERNEL_SAMPLING_MM)
        if sub % 2 != 1 or abs(sub * KERNEL_SAMPLING_MM - pixel_mm) > 1e-9:
            raise ValueError(f"pixel size {pixel_mm} mm must be an odd multiple of {KERNEL_SAMPLING_MM} mm")
        half = int(np.ceil((radius_mm or self.kernel_range_mm) / pixel_mm))
        offsets = (np.arange(sub) - sub // 2) * KERNEL_SAMPLING_MM
        axis = (np.arange(-half, half + 1)[:, None] * pixel_mm + offsets[None, :]).ravel()
        r = np.hypot(axis[:, None], axis[None, :])
        table = self.kernels_at_ssd(ssd_mm)
        cells = np.stack([np.interp(r, self.kernel_radius_mm, k, right=0.0) for k in table])
        n = 2 * half + 1
        cells *= KERNEL_SAMPLING_MM**2
        return cells.reshape(3, n, sub, n, sub).sum(axis=(2, 4))


@cache
def load_beam_data(path: Path = DATA_FILE) -> PhotonBeamData:
    """Read the tabulated machine (cached); ``# key=value`` header lines hold m, the betas, SAD and penumbra."""
    path = Path(path)
    lines = path.read_text().splitlines()
    header = dict(line[1:].strip().split("=", 1) for line in lines if line.startswith("#") and "=" in line)
    try:
        m = float(header["m_per_mm"])
        betas = np.array([float(v) for v in header["betas_per_mm"].split()])
        sad = float(header["sad_mm"])
        penumbra = float(header["penumbra_fwhm_mm"])
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path}: header value {exc} missing or malformed; regenerate the file with "
                        "benchmarks/export_pyradplan_beamdata.py") from exc
    rows = [line for line in lines if line and not line.startswith("#")][1:]
    table = np.array([[float(v) for v in row.split(",")] for row in rows])
    ssds = np.unique(table[:, 0])
    radius = table[table[:, 0] == ssds[0], 1]
    kernels = table[:, 2:5].reshape(len(ssds), len(radius), 3).transpose(0, 2, 1)
    return PhotonBeamData(m, betas, sad, penumbra, ssds, radius, np.ascontiguousarray(kernels))
