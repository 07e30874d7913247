"""One study's job: look at what arrived, then segment the CT (CT alone) or plan it (CT plus a structure set with
targets), into the study's result folder.

The decision (:func:`choose_job`): a CT series and an RT Structure Set with at least one target ROI (interpreted
type PTV, CTV or GTV, or a name the protocol knows as a target) is planned, when the node has a dose model
(``listen.dose_model``); anything else with a CT series is segmented. The segmentation model is loaded once, when
the runner is made, so that no study pays for it; the dose model is resolved (fetched from the registry and cached)
then too, so that a wrong model name stops the node at start instead of failing every study.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint import Checkpoint, load_checkpoint
from models.registry import resolve_model
from models.tasks import expect_task
from protocols.dicom.attributes import text
from protocols.dicom.importer import scan_folder
from protocols.dicom.names import build_name_table
from protocols.errors import DicomError
from protocols.protocol import Protocol, load_protocol
from runtime.listener.settings import ListenerSettings

TARGET_TYPES = frozenset({"PTV", "CTV", "GTV"})
RESULT_FIX = "the node removes a stale result folder at its next start; restart it"


class JobKind(enum.Enum):
    """What the node does with a study."""

    SEGMENT = "segment"
    PLAN = "plan"


@dataclass
class StudyContents:
    """What a study's instances are, as far as the choice of job needs."""

    ct_series: int = 0
    ct_instances: int = 0
    structure_sets: int = 0
    plans: int = 0
    doses: int = 0
    targets: list[str] = field(default_factory=list)  # ROI names of targets in the structure sets

    @property
    def modalities(self) -> dict[str, int]:
        """Instances per kind, for the audit log."""
        counts = {"CT": self.ct_instances, "RTSTRUCT": self.structure_sets, "RTPLAN": self.plans,
                  "RTDOSE": self.doses}
        return {kind: n for kind, n in counts.items() if n}


@dataclass
class JobResult:
    """What a job wrote and how long each stage took (seconds)."""

    kind: JobKind
    files: list[Path]
    timings_s: dict[str, float]


def inspect_study(folder: Path, protocol: Protocol) -> StudyContents:
    """Count the CT series and RT objects in a study folder and name the target ROIs of its structure sets."""
    patients, _ = scan_folder(folder)
    contents = StudyContents()
    table = build_name_table(protocol)
    for files in patients.values():
        contents.ct_series += len(files.ct_series)
        contents.ct_instances += sum(len(items) for items in files.ct_series.values())
        contents.structure_sets += len(files.structure_sets)
        contents.plans += len(files.plans)
        contents.doses += len(files.doses)
        for _, ds in files.structure_sets:
            contents.targets += structure_set_targets(ds, table, protocol)
    return contents


def structure_set_targets(ds, table, protocol: Protocol) -> list[str]:
    """The ROI names of an RT Structure Set that are targets, by interpreted type or by the protocol's names."""
    types = {}
    for item in ds.get("RTROIObservationsSequence", []) or []:
        types[str(item.get("ReferencedROINumber", ""))] = text(item, "RTROIInterpretedType").upper()
    targets = []
    for roi in ds.get("StructureSetROISequence", []) or []:
        name = text(roi, "ROIName")
        canonical, _ = table.lookup(name)
        if types.get(str(roi.get("ROINumber", ""))) in TARGET_TYPES or canonical in protocol.targets:
            targets.append(name)
    return targets


def choose_job(contents: StudyContents, can_plan: bool) -> JobKind:
    """Plan a CT with targets (when a dose model is configured), segment a CT otherwise; no CT is an error."""
    if contents.ct_series == 0:
        raise DicomError(f"the study holds no CT image ({', '.join(contents.modalities) or 'nothing readable'}); "
                         "send the planning CT series with the study (an RT Structure Set alone cannot be used)")
    if contents.targets and contents.structure_sets and can_plan:
        return JobKind.PLAN
    return JobKind.SEGMENT


class JobRunner:
    """Runs studies one at a time with the models loaded once."""

    def __init__(self, settings: ListenerSettings) -> None:
        self.settings = settings
        self.protocol = load_protocol(settings.protocol)
        start = time.perf_counter()
        self.seg_model: Checkpoint = load_checkpoint(resolve_model(settings.seg_model))
        expect_task(self.seg_model.task, "seg", f"listen.seg_model={settings.seg_model}")
        if settings.dose_model:
            resolve_model(settings.dose_model)
        self.load_s = time.perf_counter() - start

    def inspect(self, folder: Path) -> StudyContents:
        """What the study in ``folder`` holds (:func:`inspect_study` with the node's protocol)."""
        return inspect_study(folder, self.protocol)

    def choose(self, contents: StudyContents) -> JobKind:
        """Segment or plan (:func:`choose_job`; planning needs ``listen.dose_model``)."""
        return choose_job(contents, self.settings.dose_model is not None)

    def run(self, folder: Path, out: Path, kind: JobKind,
            progress: Callable[[str, str], None] | None = None) -> JobResult:
        """Segment or plan the study in ``folder`` into the new folder ``out``."""
        timings = self._plan(folder, out, progress) if kind is JobKind.PLAN else self._segment(folder, out)
        files = sorted(out.rglob("*.dcm"))
        if not files:
            raise DicomError(f"{kind.value} wrote no DICOM file into {out}; this is a bug in fedrt, please report it")
        return JobResult(kind, files, timings)

    def _segment(self, folder: Path, out: Path) -> dict[str, float]:
        """``runtime.segmentation.segment`` with the loaded model; its timings (read, predict, write)."""
        from models.registry import model_label
        from runtime.segmentation import segment

        return dict(segment(folder, self.seg_model, out, model_label(self.settings.seg_model)).timings_s)

    def _plan(self, folder: Path, out: Path, progress: Callable[[str, str], None] | None) -> dict[str, float]:
        """``runtime.planning.pipeline.plan_patient`` on the DICOM folder; its timings per stage."""
        from runtime.planning.pipeline import PlanRequest, plan_patient
        from runtime.planning.plan import PlanConfig

        config = PlanConfig(n_beams=self.settings.plan.beams, max_iterations=self.settings.plan.iterations)
        request = PlanRequest(folder, out, self.protocol, config, dose_model=self.settings.dose_model,
                              seg_model=self.settings.seg_model, report=True)
        outcome = plan_patient(request, progress, RESULT_FIX)
        return {k: float(v) for k, v in outcome.summary.get("timings_s", {}).items()}
