"""The synthetic CT an MR-only patient is planned on: an sct model's prediction, or a bulk-density assignment.

The model's synthetic CT is :func:`runtime.sct.predict_sct` on the MR's own grid. Bulk density is the classic
reference a model has to beat: ``bulk`` makes the body (the MR's outline, :func:`protocols.case.mr_outline`) water
and everything outside air; ``bulk-bone`` also makes the bone ROIs (:func:`protocols.dicom.names.is_bone`: the
protocol's Mandible and any ROI whose name says bone) bone. Either way the densities are not measured, and every
plan made on them says so (:attr:`SyntheticCt.warnings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.dicom.mr_only import MrOnlyCase
from protocols.errors import ConfigError
from runtime.planning import BULK_DENSITIES
from runtime.planning.density import DEFAULT_HU, DEFAULT_RED

BULK_WATER, BULK_BONE = BULK_DENSITIES
AIR_HU = DEFAULT_HU[0]  # relative density 0 in the default table
WATER_HU = 0.0  # by the definition of HU
# Bone as head-and-neck bulk-density studies assign it, whole bone contours at one density: 1.5 g/cm3 (Karotki et
# al., J Appl Clin Med Phys 12(4):97-104, 2011; with bone and air overridden PTV metrics were within 2% of the CT's,
# water only 4-5% off) and 1.53 g/cm3 (Chin et al., J Appl Clin Med Phys 15(5):100-111, 2014). Written in HU as the
# default density table reads 1.5 (about 900 HU, between marrow and cortical bone).
BULK_BONE_DENSITY = 1.5
BULK_BONE_HU = float(np.round(np.interp(BULK_BONE_DENSITY, DEFAULT_RED, DEFAULT_HU)))


@dataclass(frozen=True)
class SctSource:
    """Where an MR-only plan's densities come from: an sct model (checkpoint or ``models:/NAME@ALIAS``) or a bulk
    density (``bulk``, ``bulk-bone``); exactly one.
    """

    model: str | None = None
    bulk: str | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.bulk is None):
            raise ConfigError("give one source of the synthetic CT: an sct model (--sct-model) or a bulk density "
                              f"(--sct {'|'.join(BULK_DENSITIES)})")
        if self.bulk is not None and self.bulk not in BULK_DENSITIES:
            raise ConfigError(f"--sct {self.bulk} is not a bulk density; choose {' or '.join(BULK_DENSITIES)}")

    @property
    def option(self) -> str:
        """The command-line option that gave it, for messages: ``--sct-model MODEL`` or ``--sct bulk``."""
        return f"--sct-model {self.model}" if self.model is not None else f"--sct {self.bulk}"


@dataclass(frozen=True)
class SyntheticCt:
    """What the synthetic CT a plan was computed on is, as the written series and the plan's report say it."""

    label: str  # the model (``models.registry.model_label``) or "bulk density water[+bone ...]"
    mr_series: str  # the MR it was made from: its description and series UID
    description: str  # the written CT series' SeriesDescription
    notes: tuple[str, ...] = ()

    @property
    def derivation(self) -> str:
        """The written CT series' DerivationDescription: what made it from which MR."""
        return f"synthetic CT from MR {self.mr_series} by fedrt ({self.label}), on the planning grid"

    @property
    def warnings(self) -> list[str]:
        """The warning every plan on it carries (printed, in plan.json and on top of the report), then its notes."""
        return [f"the densities are synthetic: the dose is computed on a synthetic CT made from the MR ({self.label}),"
                " not on a CT scan; check the plan on a CT before treatment", *self.notes]


def bulk_density_ct(body: np.ndarray, bone: np.ndarray | None = None) -> np.ndarray:
    """Water (``WATER_HU``) in the body, air outside, and with ``bone`` its voxels ``BULK_BONE_HU`` (float32 HU)."""
    ct = np.where(body, WATER_HU, AIR_HU).astype(np.float32)
    if bone is not None:
        ct[bone] = BULK_BONE_HU
    return ct


def synthesise(source: SctSource, patient: MrOnlyCase) -> tuple[np.ndarray, SyntheticCt]:
    """The synthetic CT in HU on the MR's grid, and what it is."""
    from runtime.sct import SCT_DESCRIPTION  # the model's runtime (torch) is imported only when a plan needs it

    mr_series = " ".join(part for part in (patient.mr.description, f"series {patient.mr.series_uid}") if part)
    notes: tuple[str, ...] = ()
    if source.bulk is not None:
        with_bone = source.bulk == BULK_BONE
        hu = bulk_density_ct(patient.body, patient.bone if with_bone else None)
        label = "bulk density water"
        if with_bone:
            label += f"+bone {BULK_BONE_HU:g} HU"
            if not patient.bone_rois:
                notes = (f"--sct {BULK_BONE}: no ROI of the structure set is bone (named e.g. Mandible, Bones, Skull, "
                         "Vertebra), so the synthetic CT is water only; contour the bones on the MR",)
    else:
        hu, label = _predicted(source.model, patient, mr_series)
    return hu, SyntheticCt(label, mr_series, f"{SCT_DESCRIPTION} ({label})", notes)


def _predicted(model_ref: str, patient: MrOnlyCase, mr_series: str) -> tuple[np.ndarray, str]:
    """The sct model's synthetic CT on the MR's grid and the model's label."""
    from models.checkpoint import load_checkpoint
    from models.registry import model_label, resolve_model
    from models.tasks import expect_task
    from protocols.dicom.header import StudyContext
    from runtime.sct import PatientMr, predict_sct

    model = load_checkpoint(resolve_model(model_ref))
    expect_task(model.task, "sct", f"--sct-model {model_ref}")
    mr = PatientMr(patient.patient_id, patient.mr.values, patient.grid, StudyContext(patient.patient_id), mr_series)
    return predict_sct(model, mr), model_label(model_ref)
