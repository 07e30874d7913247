"""A simulated T1-weighted MR from a CT in HU: paired MR/CT for tests and benchmarks of the MRI-only flow.

No public paired head-and-neck MR/CT set can be installed here, so the MR beside each CT is made from the CT.
Everything made from it must say so (:data:`SIMULATED_MR_LABEL`). The steps:

1. **Tissue classes from HU** (:func:`classify_tissue`): air, lung, fat, soft tissue, marrow (cancellous bone)
   and cortical bone, cut at the named thresholds below. Voxels outside an optional body mask are air.
2. **T1-weighted signal per class** (:func:`tissue_signal`): the ideal spin-echo equation
   ``S = PD * (1 - exp(-TR/T1)) * exp(-TE/T2)`` (e.g. Bernstein, King & Zhou, *Handbook of MRI Pulse Sequences*,
   2004) with the site's TR/TE, relative to fat on the reference sequence. Fat is brightest, marrow bright,
   soft tissue intermediate, lung nearly black, and air and cortical bone carry no signal: the two have opposite
   densities but the same (no) MR signal, the ambiguity that makes synthetic CT hard.
3. **Partial volume**: the signal image is blurred by a Gaussian of the site's ``blur_mm`` (in mm, converted
   with the voxel spacing), so that tissue boundaries blend as in an acquired image.
4. **Bias field**: a smooth multiplicative gain ``exp(strength * p(x))`` with ``p`` a random second-order
   polynomial of the position scaled to [-1, 1] (the receive-coil non-uniformity of real scanners).
5. **Rician noise**: the magnitude of the signal plus complex Gaussian noise (Gudbjartsson & Patz, "The Rician
   distribution of noisy MRI data", Magn Reson Med 34:910-914, 1995): non-negative, with a noise floor where
   there is no signal. Noise is given, as BrainWeb does (Kwan, Evans & Pike, IEEE Trans Med Imaging
   18:1085-1097, 1999), relative to the brightest tissue (fat); BrainWeb's range 0-9 % noise and 0-40 %
   intensity non-uniformity frames the per-site ranges of :meth:`Scanner.for_site`.
6. **Arbitrary global scale** (receiver gain, vendor scaling): MR intensities have no physical unit.

Tissue properties (``TISSUES``), all approximate literature-based values, not a calibrated model:

- T1/T2 of fat, marrow and soft tissue: de Bazelaire et al., "MR imaging relaxation times of abdominal and
  pelvic tissues measured in vivo at 3.0 T", Radiology 230:652-659, 2004 (subcutaneous fat T1 382 ms / T2 68 ms;
  bone marrow of L4 586 / 49 ms; paravertebral muscle 898 / 29 ms, standing for all soft tissue).
- Lung T1 1199 ms: Stadler et al., "T1 mapping of the entire lung parenchyma", J Magn Reson Imaging 21:759-764,
  2005 (1.5 T, inspiration). Lung T2 is short (about 9-10 ms in mouse lung at 4.7 T: "In vivo measurements of
  T2 relaxation time of mouse lungs during inspiration and expiration", PLoS One, doi:10.1371/journal.pone.
  0166879, 2016); 10 ms is taken here. Its signal is nearly nil in any case (a quarter of the protons).
- Cortical bone: T2* about 0.4-0.5 ms (ultrashort-TE measurements, e.g. Reichert et al., Magn Reson Imaging
  23:611-618, 2005), so it gives no signal at conventional echo times; its T1 (250 ms) is a placeholder that
  cannot matter with such a T2.
- Proton density: hydrogen per volume relative to water, from the elemental compositions and densities of
  ICRU Report 46 (1992; Woodard & White 1986): adipose tissue H 11.4 % at 0.95 g/cm3, skeletal muscle 10.2 %
  at 1.05, yellow marrow 11.5 % at 0.98, inflated lung 10.3 % at 0.26, cortical bone 3.4 % at 1.92. This counts
  all hydrogen, an upper bound on the MR-visible (mobile) protons, so soft-tissue contrast here comes from
  relaxation alone.

The resulting reference contrast (TR 600 ms, TE 10 ms): fat 1.0, marrow about 0.80, soft tissue about 0.50,
lung about 0.05, air and cortical bone 0, in line with the usual appearance of T1-weighted images. Limits:
fluid (CSF, about 0-15 HU) cannot be told from soft tissue by HU and is simulated as soft tissue (darker in real
T1 images); CT voxels that blend cortical bone with soft tissue (150-700 HU at a bone's edge) are classed as marrow
and so appear bright; no chemical shift, susceptibility, motion or geometric distortion is simulated.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from protocols.errors import ConfigError, DataError

# Every figure, report or file made on these images says this: they are not acquired MR.
SIMULATED_MR_LABEL = "simulated MR"
# Part of every image's random stream: a change to the simulation changes the images of every seed.
SIMULATOR_VERSION = 1


class Tissue(IntEnum):
    """The tissue classes told apart by HU, in order of increasing density (the values index class maps)."""

    AIR = 0
    LUNG = 1
    FAT = 2
    SOFT_TISSUE = 3
    MARROW = 4
    CORTICAL_BONE = 5


# HU thresholds: a voxel belongs to the first class whose upper bound it is below.
# Below -950 HU a voxel is essentially air (the emphysema cut-off of lung CT: lung voxels below it hold no tissue).
AIR_MAX_HU = -950.0
# Adipose tissue is -190 to -30 HU and skeletal muscle -29 to +150 HU (Mitsiopoulos et al., J Appl Physiol
# 85:115-122, 1998, the usual CT body-composition ranges): below -190 HU is aerated tissue (lung, air edges).
LUNG_MAX_HU = -190.0
FAT_MAX_HU = -30.0
SOFT_TISSUE_MAX_HU = 150.0
# Cancellous bone measures about +300 to +400 HU (marrow between trabeculae) and compact bone +700 HU and more
# (Buzug, Computed Tomography, 2008: bone 700 to 3000 HU): above 700 HU a voxel is mostly cortex.
MARROW_MAX_HU = 700.0
_UPPER_BOUNDS_HU = (AIR_MAX_HU, LUNG_MAX_HU, FAT_MAX_HU, SOFT_TISSUE_MAX_HU, MARROW_MAX_HU)

WATER_HYDROGEN_MASS_FRACTION = 2 * 1.008 / 18.015


@dataclass(frozen=True)
class TissueProperties:
    """A tissue's MR-relevant properties: hydrogen content (ICRU 46) and relaxation times in ms."""

    hydrogen_mass_fraction: float
    density_g_cm3: float
    t1_ms: float
    t2_ms: float

    @property
    def proton_density(self) -> float:
        """Hydrogen per volume relative to water."""
        return self.hydrogen_mass_fraction * self.density_g_cm3 / WATER_HYDROGEN_MASS_FRACTION


# Sources and caveats in the module docstring.
TISSUES: dict[Tissue, TissueProperties] = {
    Tissue.AIR: TissueProperties(0.0, 0.0, 1.0, 1.0),
    Tissue.LUNG: TissueProperties(0.103, 0.26, 1199.0, 10.0),
    Tissue.FAT: TissueProperties(0.114, 0.95, 382.0, 68.0),
    Tissue.SOFT_TISSUE: TissueProperties(0.102, 1.05, 898.0, 29.0),
    Tissue.MARROW: TissueProperties(0.115, 0.98, 586.0, 49.0),
    Tissue.CORTICAL_BONE: TissueProperties(0.034, 1.92, 250.0, 0.45),
}

# The reference T1-weighted spin echo (a typical clinical choice: TR well below soft tissue's T1, short TE).
REFERENCE_TR_MS = 600.0
REFERENCE_TE_MS = 10.0
# Per-site ranges drawn by Scanner.for_site: sequences, contrast, coil, noise and gain differ between hospitals.
SITE_TR_MS = (450.0, 750.0)
SITE_TE_MS = (8.0, 15.0)
SITE_CONTRAST_SD = 0.08  # log-normal spread of each tissue's signal (RF pulses, reconstruction filters)
SITE_BLUR_MM = (1.0, 2.0)  # Gaussian sigma of the point spread / partial volume
SITE_BIAS_STRENGTH = (0.05, 0.2)  # gains within exp(+-strength): about 10-40 % peak to peak, as BrainWeb
SITE_NOISE_SD = (0.01, 0.04)  # 1-4 % of the fat signal
SITE_SCALE = (100.0, 4000.0)  # log-uniform arbitrary units
_SCANNER_STREAM = 0x4D52  # keeps a site's scanner stream apart from other uses of the same seed


@dataclass(frozen=True)
class Scanner:
    """One site's MR scanner and T1-weighted sequence: everything that makes its images differ from another's.

    Args:
        seed: seeds each image's bias field and noise (with a digest of the CT), so the same scanner and CT give
            the same image.
        tr_ms, te_ms: repetition and echo time of the spin echo.
        contrast: a multiplicative factor on each tissue's signal, indexed by :class:`Tissue`.
        blur_mm: Gaussian sigma in mm of the partial-volume blur.
        bias_strength: the bias field's gains lie within ``exp(+-bias_strength)``.
        noise_sd: standard deviation of each channel of the complex noise, relative to the reference fat signal.
        scale: arbitrary global scale of the output intensities.
    """

    seed: int = 0
    tr_ms: float = REFERENCE_TR_MS
    te_ms: float = REFERENCE_TE_MS
    contrast: tuple[float, ...] = (1.0,) * len(Tissue)
    blur_mm: float = 1.5
    bias_strength: float = 0.1
    noise_sd: float = 0.02
    scale: float = 1000.0

    def __post_init__(self) -> None:
        problems = [name for name, ok in (
            ("seed >= 0", self.seed >= 0),
            ("0 < te_ms < tr_ms", 0 < self.te_ms < self.tr_ms),
            (f"{len(Tissue)} positive contrast factors",
             len(self.contrast) == len(Tissue) and all(c > 0 for c in self.contrast)),
            ("blur_mm >= 0", self.blur_mm >= 0),
            ("bias_strength >= 0", self.bias_strength >= 0),
            ("noise_sd >= 0", self.noise_sd >= 0),
            ("scale > 0", self.scale > 0),
        ) if not ok]
        if problems:
            raise ConfigError(f"MR scanner settings need {', '.join(problems)}; got {self}. "
                              "Use Scanner.for_site(seed) for a plausible scanner")

    @classmethod
    def for_site(cls, seed: int) -> Scanner:
        """A reproducible scanner for the virtual hospital of ``seed``, drawn from the per-site ranges."""
        if seed < 0:
            raise ConfigError(f"scanner seed must be >= 0, got {seed}; give a seed of 0 or more")
        rng = np.random.default_rng([int(seed), _SCANNER_STREAM, SIMULATOR_VERSION])
        return cls(
            seed=int(seed),
            tr_ms=float(rng.uniform(*SITE_TR_MS)),
            te_ms=float(rng.uniform(*SITE_TE_MS)),
            contrast=tuple(float(c) for c in rng.lognormal(0.0, SITE_CONTRAST_SD, len(Tissue))),
            blur_mm=float(rng.uniform(*SITE_BLUR_MM)),
            bias_strength=float(rng.uniform(*SITE_BIAS_STRENGTH)),
            noise_sd=float(rng.uniform(*SITE_NOISE_SD)),
            scale=float(np.exp(rng.uniform(*np.log(SITE_SCALE)))),
        )

    def describe(self) -> str:
        """One line for reports: the sequence, noise, bias and scale."""
        return (f"T1-weighted spin echo TR {self.tr_ms:.0f} ms TE {self.te_ms:.1f} ms, "
                f"noise {100 * self.noise_sd:.1f} %, bias within +-{100 * (np.exp(self.bias_strength) - 1):.0f} %, "
                f"scale {self.scale:.0f}")

    def to_dict(self) -> dict:
        """The settings as plain data (a provenance record)."""
        return dataclasses.asdict(self)


def classify_tissue(ct_hu: np.ndarray, body: np.ndarray | None = None) -> np.ndarray:
    """The :class:`Tissue` of every voxel (uint8) from its HU; outside ``body`` (couch, immobilisation mask) air."""
    classes = np.digitize(ct_hu, _UPPER_BOUNDS_HU).astype(np.uint8)
    if body is not None:
        classes[~body] = Tissue.AIR
    return classes


def _spin_echo(tissue: TissueProperties, tr_ms: float, te_ms: float) -> float:
    return tissue.proton_density * (1.0 - np.exp(-tr_ms / tissue.t1_ms)) * np.exp(-te_ms / tissue.t2_ms)


def tissue_signal(scanner: Scanner) -> np.ndarray:
    """The scanner's noiseless signal of each :class:`Tissue` (float64), relative to fat on the reference sequence."""
    reference = _spin_echo(TISSUES[Tissue.FAT], REFERENCE_TR_MS, REFERENCE_TE_MS)
    return np.array([_spin_echo(TISSUES[t], scanner.tr_ms, scanner.te_ms) * scanner.contrast[t] / reference
                     for t in Tissue])


def bias_field(shape: tuple[int, int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth positive gain (float32) within ``exp(+-strength)``: exp of a random second-order polynomial of the
    position scaled to [-1, 1] on each axis, normalised to peak magnitude 1.
    """
    axes = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij", sparse=True)
    terms = [*axes, *(a * b for i, a in enumerate(axes) for b in axes[i:])]  # x, y, z, x^2, xy, xz, y^2, yz, z^2
    poly = np.broadcast_to(sum(c * t for c, t in zip(rng.normal(0.0, 1.0, len(terms)), terms, strict=True)), shape)
    poly = poly - poly.mean()
    peak = float(np.abs(poly).max())
    return np.exp(strength * poly / peak if peak > 0 else np.zeros(shape)).astype(np.float32)


def _image_rng(scanner: Scanner, ct_hu: np.ndarray, body: np.ndarray | None) -> np.random.Generator:
    """The random stream of one image: the scanner's seed and the image, so each patient gets its own noise."""
    digest = hashlib.sha256(np.ascontiguousarray(ct_hu, dtype=np.float32).tobytes())
    if body is not None:
        digest.update(np.packbits(body).tobytes())
    words = np.frombuffer(digest.digest()[:16], dtype=np.uint32)
    return np.random.default_rng([scanner.seed, SIMULATOR_VERSION, *map(int, words)])


def simulate_mr(
    ct_hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    scanner: Scanner,
    body: np.ndarray | None = None,
) -> np.ndarray:
    """A simulated T1-weighted MR (float32, arbitrary units, on the CT's grid) of a CT in HU, as ``scanner`` sees it.

    Args:
        ct_hu: the CT in HU, 3-D.
        spacing_mm: voxel size in mm along the three axes.
        scanner: the site's scanner; the same scanner and CT give an identical image.
        body: the patient's outline (boolean, same shape); outside it is air. None: classify by HU everywhere.
    """
    ct_hu = np.asarray(ct_hu)
    if ct_hu.ndim != 3 or not np.all(np.isfinite(ct_hu)):
        raise DataError(f"simulated MR needs a 3-D CT of finite HU, got shape {ct_hu.shape}"
                        f"{'' if ct_hu.ndim != 3 else ' with non-finite values'}; check the CT file")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise DataError(f"simulated MR needs three positive voxel sizes in mm, got {spacing_mm}")
    if body is not None:
        body = np.asarray(body, dtype=bool)
        if body.shape != ct_hu.shape:
            raise DataError(f"the body mask's shape {body.shape} differs from the CT's {ct_hu.shape}")
    rng = _image_rng(scanner, ct_hu, body)
    signal = tissue_signal(scanner).astype(np.float32)[classify_tissue(ct_hu, body)]
    if scanner.blur_mm > 0:
        signal = ndimage.gaussian_filter(signal, sigma=tuple(scanner.blur_mm / spacing), mode="nearest")
    signal *= bias_field(ct_hu.shape, scanner.bias_strength, rng)
    real = signal + rng.normal(0.0, scanner.noise_sd, ct_hu.shape).astype(np.float32)
    imaginary = rng.normal(0.0, scanner.noise_sd, ct_hu.shape).astype(np.float32)
    return (np.hypot(real, imaginary) * np.float32(scanner.scale)).astype(np.float32)
