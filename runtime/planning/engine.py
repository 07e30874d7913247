"""Photon pencil-beam dose engine: the dose at any set of points as a linear map of the beams' fluence.

For each beam, fluence lives on a 2.5 mm iso-plane pixel grid (beamlet and leaf edges fall on pixel edges). Its
dose is ``ISQ(p) * sum_c D_c(z_p) * (F * K_c)(u_p, w_p)``: inverse square to the point, the three depth components of
:mod:`runtime.planning.beamdata` at the point's radiological depth, and the fluence convolved (FFT) with the radial
kernels (and the source penumbra), read off bilinearly at the point's projection. Weights are in monitor units:
1 MU gives 0.01 Gy at d_max on the axis of a 10 x 10 cm field at SSD 100 cm.

The voxels x beamlets dose-influence matrix of a 6 MV kernel is dense in practice (the scatter kernel reaches
180 mm, so every beamlet of a beam reaches every voxel in its field: ~5k beamlets x 30k voxels), so
:class:`DoseInfluence` keeps it factorised: per beam a CSR matrix (points x kernel-image pixels, 12 entries per
point) times the FFT convolution times the beamlet -> pixel map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, sparse

from runtime.planning.beamdata import PhotonBeamData, load_beam_data
from runtime.planning.geometry import Beam, BeamletGrid, PatientFrame
from runtime.planning.raytrace import DepthVolume, box_corners, trace_depths

PIXEL_MM = 2.5
REFERENCE_FIELD_MM = 100.0
GY_PER_MU_REFERENCE = 0.01


@dataclass
class BeamKernel:
    """One beam's convolution set-up: the pixel grid (FFT period), kernel spectra and the beamlet -> pixel map."""

    beam: Beam
    grid: BeamletGrid
    ssd_mm: float
    origin_mm: tuple[float, float]  # (u, w) of pixel (0, 0)'s centre
    shape: tuple[int, int]
    kernel_ft: np.ndarray  # (3, nu, nw // 2 + 1) complex64
    pixel_flat: np.ndarray  # flat pixel indices covered by beamlets
    pixel_beamlet: np.ndarray  # the beamlet (index among the beam's active ones) of each such pixel

    def fluence_image(self, weights: np.ndarray) -> np.ndarray:
        """Beamlet weights (MU) -> fluence pixel image (nu, nw)."""
        image = np.zeros(self.shape[0] * self.shape[1], dtype=np.float32)
        image[self.pixel_flat] = weights[self.pixel_beamlet]
        return image.reshape(self.shape)

    def convolve(self, image: np.ndarray) -> np.ndarray:
        """Fluence image -> (3, nu, nw) kernel-component images."""
        spectrum = fft.rfft2(image, workers=-1)
        return fft.irfft2(spectrum[None] * self.kernel_ft, s=self.shape, workers=-1)

    def convolve_adjoint(self, images: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`convolve`: (3, nu, nw) -> (nu, nw)."""
        spectra = fft.rfft2(images, workers=-1)
        return fft.irfft2((spectra * np.conj(self.kernel_ft)).sum(axis=0), s=self.shape, workers=-1)

    def aperture_image(self, row_edges_mm: np.ndarray, left_mm: np.ndarray, right_mm: np.ndarray,
                       weights_mu: np.ndarray, jaws_mm: tuple[float, float, float, float]) -> np.ndarray:
        """Fluence image (MU) of MLC segments: each pixel's open fraction per leaf pair, within the jaws.

        ``left_mm``/``right_mm`` are (segments, leaf pairs) leaf-tip positions, ``row_edges_mm`` the pairs' edges.
        """
        uc, wc = self.pixel_centres()
        x1, x2, y1, y2 = jaws_mm
        image = np.zeros(self.shape)
        for r in range(len(row_edges_mm) - 1):
            lo, hi = max(row_edges_mm[r], y1), min(row_edges_mm[r + 1], y2)
            w_cover = np.clip(np.minimum(wc + PIXEL_MM / 2, hi) - np.maximum(wc - PIXEL_MM / 2, lo), 0, None)
            if hi <= lo or not w_cover.any():
                continue
            left = np.maximum(left_mm[:, r], x1)[:, None]
            right = np.minimum(right_mm[:, r], x2)[:, None]
            u_cover = np.clip(np.minimum(uc + PIXEL_MM / 2, right) - np.maximum(uc - PIXEL_MM / 2, left), 0, None)
            image += np.outer(weights_mu @ u_cover, w_cover) / PIXEL_MM**2
        return image.astype(np.float32)

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.origin_mm[0] + PIXEL_MM * np.arange(self.shape[0]),
                self.origin_mm[1] + PIXEL_MM * np.arange(self.shape[1]))


def _pixel_map(grid: BeamletGrid, origin: tuple[float, float], shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Flat pixel indices inside active beamlets and their beamlet index (beamlet edges lie on pixel edges)."""
    index = np.full(grid.shape, -1, dtype=np.int64)
    index[grid.active] = np.arange(grid.n_beamlets)
    uc = origin[0] + PIXEL_MM * np.arange(shape[0])
    wc = origin[1] + PIXEL_MM * np.arange(shape[1])
    col = np.searchsorted(grid.col_edges_mm, uc, side="right") - 1
    row = np.searchsorted(grid.row_edges_mm, wc, side="right") - 1
    inside_u = (col >= 0) & (col < grid.shape[1])
    inside_w = (row >= 0) & (row < grid.shape[0])
    iu, iw = np.meshgrid(np.flatnonzero(inside_u), np.flatnonzero(inside_w), indexing="ij")
    beamlet = index[row[iw], col[iu]]
    keep = beamlet >= 0
    return (iu[keep] * shape[1] + iw[keep]).astype(np.int64), beamlet[keep]


def beam_kernel(beam: Beam, grid: BeamletGrid, ssd_mm: float, data: PhotonBeamData, mu_scale: float) -> BeamKernel:
    """Set up a beam's pixel grid, wide enough that the circular convolution does not wrap onto its field."""
    reach = np.ceil(data.kernel_range_mm / PIXEL_MM) * PIXEL_MM  # keeps beamlet edges on pixel edges
    lo = (float(grid.col_edges_mm[0]), float(grid.row_edges_mm[0]))
    hi = (float(grid.col_edges_mm[-1]), float(grid.row_edges_mm[-1]))
    shape = tuple(fft.next_fast_len(int(np.ceil((b - a + 2 * reach) / PIXEL_MM)) + 1, real=True)
                  for a, b in zip(lo, hi, strict=True))
    origin = tuple(a - reach + PIXEL_MM / 2 for a in lo)
    kernels = data.pixel_kernels(ssd_mm, PIXEL_MM)
    half = kernels.shape[1] // 2
    wrapped = np.zeros((3, *shape), dtype=np.float64)
    ii = np.arange(-half, half + 1) % shape[0]
    jj = np.arange(-half, half + 1) % shape[1]
    wrapped[:, ii[:, None], jj[None, :]] = kernels
    fu = np.fft.fftfreq(shape[0], d=PIXEL_MM)[:, None]
    fw = np.fft.rfftfreq(shape[1], d=PIXEL_MM)[None, :]
    sigma = data.penumbra_fwhm_mm / np.sqrt(8 * np.log(2))
    penumbra = np.exp(-2 * np.pi**2 * sigma**2 * (fu**2 + fw**2))
    kernel_ft = (fft.rfft2(wrapped, axes=(1, 2)) * penumbra[None] * mu_scale).astype(np.complex64)
    flat, beamlet = _pixel_map(grid, origin, shape)
    return BeamKernel(beam, grid, ssd_mm, origin, shape, kernel_ft, flat, beamlet)


def point_matrix(kernel: BeamKernel, u: np.ndarray, w: np.ndarray, weights: np.ndarray) -> sparse.csr_matrix:
    """CSR (points x 3 * pixels): bilinear read-off of the three component images, times per-point weights (3, N)."""
    nu, nw = kernel.shape
    fu = (u - kernel.origin_mm[0]) / PIXEL_MM
    fw = (w - kernel.origin_mm[1]) / PIXEL_MM
    i0 = np.floor(fu).astype(np.int64)
    j0 = np.floor(fw).astype(np.int64)
    a = (fu - i0).astype(np.float32)
    b = (fw - j0).astype(np.float32)
    inside = (i0 >= 0) & (i0 < nu - 1) & (j0 >= 0) & (j0 < nw - 1)
    n = len(u)
    rows = np.flatnonzero(inside)
    i0, j0, a, b = i0[rows], j0[rows], a[rows], b[rows]
    corner_w = [(1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b]
    corner_ix = [i0 * nw + j0, i0 * nw + j0 + 1, (i0 + 1) * nw + j0, (i0 + 1) * nw + j0 + 1]
    data, cols = [], []
    for c in range(3):
        wc = weights[c, rows]
        for cw, cix in zip(corner_w, corner_ix, strict=True):
            data.append(cw * wc)
            cols.append(cix + c * nu * nw)
    data_arr = np.stack(data, axis=1).ravel()
    col_arr = np.stack(cols, axis=1).ravel()
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[rows + 1] = 12
    indptr = np.cumsum(indptr)
    return sparse.csr_matrix((data_arr.astype(np.float32), col_arr, indptr), shape=(n, 3 * nu * nw))


def mu_calibration(data: PhotonBeamData) -> float:
    """Factor from kernel units to MU: 1 MU -> 0.01 Gy at d_max, 10 x 10 cm field, SSD 100 cm, on the axis."""
    kernels = data.pixel_kernels(data.sad_mm, PIXEL_MM)
    half = kernels.shape[1] // 2
    n = int(REFERENCE_FIELD_MM / PIXEL_MM) // 2  # field centre on a pixel corner: the 4 central pixels' mean
    field = np.zeros(kernels.shape[1:])
    field[half - n: half + n, half - n: half + n] = 1.0
    lateral = np.array([[np.sum(k * np.roll(field, (di, dj), axis=(0, 1))) for di in (0, 1) for dj in (0, 1)]
                        for k in kernels]).mean(axis=1)
    depth = np.arange(0.0, 100.0, 0.25)
    cax = (data.sad_mm / (data.sad_mm + depth)) ** 2 * (data.depth_components(depth) * lateral[:, None]).sum(0)
    return GY_PER_MU_REFERENCE / float(cax.max())


@dataclass
class DoseEngine:
    """Everything fixed for one patient and one set of beams: frame, beams, beamlet grids, kernels, depths."""

    frame: PatientFrame
    beams: list[Beam]
    grids: list[BeamletGrid]
    data: PhotonBeamData
    kernels: list[BeamKernel]
    depths: list[DepthVolume]

    @classmethod
    def build(cls, density: np.ndarray, frame: PatientFrame, beams: list[Beam], grids: list[BeamletGrid],
              region: np.ndarray | None = None, data: PhotonBeamData | None = None,
              mu_scale: float | None = None) -> DoseEngine:
        """Trace each beam once over ``region`` (a mask holding every point dose will be asked for; default all).

        ``density`` is relative electron density (see :mod:`runtime.planning.density`); ``mu_scale=1`` keeps the
        kernel units of the tabulated data instead of MU.
        """
        data = data or load_beam_data()
        scale = mu_calibration(data) if mu_scale is None else mu_scale
        corners = box_corners(frame, region)
        depths = [trace_depths(density, frame, beam, corners) for beam in beams]
        kernels = [beam_kernel(beam, grid, depth.ssd_mm, data, scale)
                   for beam, grid, depth in zip(beams, grids, depths, strict=True)]
        return cls(frame, beams, grids, data, kernels, depths)

    @property
    def n_beamlets(self) -> int:
        return sum(g.n_beamlets for g in self.grids)

    @property
    def beamlet_offsets(self) -> np.ndarray:
        """Start of each beam's beamlets in the stacked weight vector (n_beams + 1 values)."""
        return np.concatenate([[0], np.cumsum([g.n_beamlets for g in self.grids])])

    def point_matrices(self, points_lps: np.ndarray) -> list[sparse.csr_matrix]:
        """Per beam, the CSR read-off matrix of the points (radiological depth, inverse square, depth dose)."""
        mats = []
        for kernel, volume in zip(self.kernels, self.depths, strict=True):
            beam = kernel.beam
            u, w, _ = beam.bev(points_lps)
            depth = volume.depth_at(points_lps)
            geo = np.linalg.norm(points_lps - beam.source_lps, axis=1)
            weights = self.data.depth_components(depth) * ((beam.sad_mm / geo) ** 2).astype(np.float32)
            mats.append(point_matrix(kernel, u, w, weights))
        return mats

    def influence(self, points_lps: np.ndarray) -> DoseInfluence:
        """The dose-influence operator of these points (dose = D @ weights)."""
        return DoseInfluence(self, self.point_matrices(points_lps))

    def dose_from_images(self, images: list[np.ndarray], points_lps: np.ndarray, chunk: int = 250_000) -> np.ndarray:
        """Dose (Gy) at points from per-beam fluence pixel images in MU (e.g. rasterised MLC segments).

        The same read-off as :meth:`point_matrices`, evaluated directly (no matrix) for many points.
        """
        dose = np.zeros(len(points_lps), dtype=np.float64)
        for kernel, volume, image in zip(self.kernels, self.depths, images, strict=True):
            planes = kernel.convolve(image).astype(np.float32)
            nu, nw = kernel.shape
            for start in range(0, len(points_lps), chunk):
                part = points_lps[start: start + chunk]
                u, w, _ = kernel.beam.bev(part)
                fu = (u - kernel.origin_mm[0]) / PIXEL_MM
                fw = (w - kernel.origin_mm[1]) / PIXEL_MM
                i0, j0 = np.floor(fu).astype(np.int64), np.floor(fw).astype(np.int64)
                inside = (i0 >= 0) & (i0 < nu - 1) & (j0 >= 0) & (j0 < nw - 1)
                i0, j0 = np.where(inside, i0, 0), np.where(inside, j0, 0)
                a, b = (fu - i0).astype(np.float32), (fw - j0).astype(np.float32)
                comps = self.data.depth_components(volume.depth_at(part))
                geo = np.linalg.norm(part - kernel.beam.source_lps, axis=1)
                total = np.zeros(len(part), dtype=np.float32)
                for c in range(3):
                    p = planes[c]
                    value = ((1 - a) * ((1 - b) * p[i0, j0] + b * p[i0, j0 + 1])
                             + a * ((1 - b) * p[i0 + 1, j0] + b * p[i0 + 1, j0 + 1]))
                    total += comps[c] * value
                dose[start: start + chunk] += np.where(inside, total * (kernel.beam.sad_mm / geo) ** 2, 0.0)
        return dose

    def dose_from_weights(self, weights: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
        """Dose (Gy) at points from stacked beamlet weights (MU)."""
        off = self.beamlet_offsets
        images = [k.fluence_image(weights[off[i]: off[i + 1]]) for i, k in enumerate(self.kernels)]
        return self.dose_from_images(images, points_lps)


@dataclass
class DoseInfluence:
    """The factorised voxels x beamlets dose-influence matrix D of fixed points: ``dose = D @ x``, ``D.T @ g``."""

    engine: DoseEngine
    matrices: list[sparse.csr_matrix]

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrices[0].shape[0], self.engine.n_beamlets

    def dose(self, weights: np.ndarray) -> np.ndarray:
        off = self.engine.beamlet_offsets
        out = np.zeros(self.shape[0], dtype=np.float64)
        for i, (kernel, mat) in enumerate(zip(self.engine.kernels, self.matrices, strict=True)):
            out += mat @ kernel.convolve(kernel.fluence_image(weights[off[i]: off[i + 1]])).ravel()
        return out

    def adjoint(self, values: np.ndarray) -> np.ndarray:
        """``D.T @ values``: the gradient of sum(values * dose) with respect to the beamlet weights."""
        parts = []
        g = values.astype(np.float32)
        for kernel, mat in zip(self.engine.kernels, self.matrices, strict=True):
            back = kernel.convolve_adjoint((mat.T @ g).reshape(3, *kernel.shape)).ravel()
            parts.append(np.bincount(kernel.pixel_beamlet, weights=back[kernel.pixel_flat],
                                     minlength=kernel.grid.n_beamlets))
        return np.concatenate(parts)
