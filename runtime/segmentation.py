"""Segment a new patient's CT: resample to the model's grid, predict the OARs, resample back, write RTSTRUCT.

Input is a DICOM folder holding a CT series (any size and spacing) or an OpenKBP patient folder; output is an
RT Structure Set that references the CT it was drawn on (for OpenKBP input the CT series is written too, so
there is something to reference), and a PNG overview of the contours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import loop
from models.checkpoint import Checkpoint
from models.tasks import expect_task
from protocols.case import Case
from protocols.dicom.ct import read_ct_series
from protocols.dicom.export import CtReference, centred_grid, write_rtstruct, write_study
from protocols.dicom.geometry import VolumeGrid, resample
from protocols.dicom.header import StudyContext
from protocols.dicom.importer import folder_name, single_series
from protocols.errors import DataNotFoundError
from protocols.files import refuse_non_empty, staged_folder
from protocols.openkbp import is_patient_dir, load_openkbp_case
from protocols.protocol import Protocol
from protocols.validation import CaseReport, DataValidationError, Policy, apply_policy
from runtime.stages import StageClock

AIR_HU = -1000.0


@dataclass
class PlanningCt:
    """A CT in case axis order with where it sits in patient space and how RT objects must reference it."""

    patient_id: str
    ct_hu: np.ndarray
    grid: VolumeGrid
    context: StudyContext
    reference: CtReference | None


@dataclass
class SegmentationResult:
    """Masks on the CT grid, the files written and the time each stage took (seconds)."""

    masks: dict[str, np.ndarray]
    rtstruct: Path
    overview: Path
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def not_found(self) -> list[str]:
        """The organs the model found no voxel of (left out of the structure set, not written empty)."""
        return [name for name, mask in self.masks.items() if not mask.any()]


def read_planning_ct(source: Path, protocol: Protocol, policy: Policy | str = Policy.WARN) -> PlanningCt:
    """The CT of one patient from a DICOM folder (one CT series expected) or an OpenKBP patient folder."""
    source = Path(source)
    if is_patient_dir(source):
        case, _ = load_openkbp_case(source, protocol, Policy.RAISE, require_dose=False)
        return PlanningCt(case.patient_id, case.ct_hu, centred_grid(case.shape, case.spacing_mm),
                          StudyContext(case.patient_id), None)
    if not source.is_dir():
        raise DataNotFoundError(f"{source} is neither a DICOM folder nor an OpenKBP patient folder; give the folder "
                                "of one patient's planning CT")
    patient_id, _, items = single_series(source, "CT", "one patient's planning CT")
    report = CaseReport(patient_id, source)
    ct = read_ct_series(items, report)
    apply_policy(report, policy)
    if ct is None:
        raise DataValidationError(report)
    context = StudyContext.of_image(items[0][1])
    return PlanningCt(patient_id, ct.ct_hu, ct.grid, context, CtReference(ct.series_uid, ct.sop_instance_uids))


def model_grid(grid: VolumeGrid, spacing_mm: tuple[float, float, float]) -> VolumeGrid:
    """The model's spacing over the same field of view, starting at the same first voxel."""
    extent = (np.asarray(grid.shape) - 1) * np.asarray(grid.spacing_mm)
    shape = tuple(int(n) for n in np.floor(extent / np.asarray(spacing_mm) + 1e-6) + 1)
    return VolumeGrid(shape, tuple(float(s) for s in spacing_mm), grid.origin_mm)


def predict_masks(model: Checkpoint, ct: PlanningCt) -> dict[str, np.ndarray]:
    """OAR masks on the CT's own grid: predicted on the protocol's spacing and resampled back."""
    work = model_grid(ct.grid, model.task.protocol.grid.spacing_mm)
    ct_work = resample(ct.ct_hu, ct.grid, work, order=1, cval=AIR_HU)
    case = Case(ct.patient_id, ct_work.astype(np.float32), work.spacing_mm)
    masks = loop.predict(model.network, model.task, case)
    return {name: resample(mask.astype(np.float32), work, ct.grid, order=1) >= 0.5 for name, mask in masks.items()}


def segment(source: Path | str, model: Checkpoint, out_dir: Path | str, label: str) -> SegmentationResult:
    """Segment one patient into a new or empty ``out_dir``: ``RS_<patient>.dcm`` (for OpenKBP input the CT series
    and ``RTSTRUCT.dcm``) and ``overview.png``; the folder appears complete or not at all.

    ``label`` names the model in each ROI's generation description (``models.registry.model_label``); organs
    the model found nowhere are left out (``SegmentationResult.not_found``).
    """
    expect_task(model.task, "seg", "the model given to `fedrt segment`")
    out_dir = Path(out_dir)
    fix = "choose another --out or delete it"
    refuse_non_empty(out_dir, fix)
    clock = StageClock()
    with clock.stage("read"):
        ct = read_planning_ct(Path(source), model.task.protocol)
    with clock.stage("predict"):
        masks = predict_masks(model, ct)
    with clock.stage("write"), staged_folder(out_dir, fix=fix) as staging:
        found = {name: mask for name, mask in masks.items() if mask.any()}
        generation = dict.fromkeys(found, f"fedrt seg model {label}")
        if ct.reference is None:
            case = Case(ct.patient_id, ct.ct_hu, ct.grid.spacing_mm, structures=found)
            rtstruct = write_study(case, staging, ct.grid, model.task.protocol, ct.context, generation).rtstruct
        else:
            rtstruct = write_rtstruct(found, ct.grid, ct.reference, staging / f"RS_{folder_name(ct.patient_id, set())}"
                                      ".dcm", ct.context, generation=generation)
        overview = write_overview(ct, masks, staging / "overview.png")
    return SegmentationResult(masks, out_dir / rtstruct.name, out_dir / overview.name, clock.timings)


def write_overview(ct: PlanningCt, masks: dict[str, np.ndarray], path: Path, n_slices: int = 4) -> Path:
    """A PNG of a few axial slices through the segmented organs with each organ's contour in its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [m for m in masks.values() if m.any()]
    slices_with = np.flatnonzero(np.any(np.stack(found), axis=(0, 1, 2))) if found else np.arange(ct.grid.shape[2])
    picks = np.unique(np.quantile(slices_with, np.linspace(0.15, 0.85, n_slices)).round().astype(int))
    aspect = ct.grid.spacing_mm[0] / ct.grid.spacing_mm[1]
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 4.4), squeeze=False)
    colours = plt.get_cmap("tab10")
    body = np.argwhere(np.any(ct.ct_hu > -500, axis=2))
    (r0, c0), (r1, c1) = (body.min(0), body.max(0)) if body.size else ((0, 0), ct.grid.shape[:2])
    for ax, k in zip(axes[0], picks, strict=True):
        ax.imshow(ct.ct_hu[:, :, k], cmap="gray", vmin=-300, vmax=500, aspect=aspect)
        ax.set_xlim(c0 - 5, c1 + 5)
        ax.set_ylim(r1 + 5, r0 - 5)
        for i, (name, mask) in enumerate(masks.items()):
            if mask[:, :, k].any():
                ax.contour(mask[:, :, k], levels=[0.5], colors=[colours(i % 10)], linewidths=1.2)
                ax.plot([], [], color=colours(i % 10), label=name)
        ax.set_title(f"slice {k} (superior -> inferior)", fontsize=9)
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7) or 1, fontsize=8)
    fig.suptitle(f"fedrt segment: {ct.patient_id} (patient left on the image right)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
