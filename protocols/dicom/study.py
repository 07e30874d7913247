"""One patient's DICOM objects -> a case on the CT grid: pick the CT, its structure set, dose and plan.

Links follow the references a planning system writes (structure set -> CT series, dose -> plan -> structure
set) and fall back on the frame of reference, then on "the only CT of the study", each fallback reported. An MR
series beside the CT is paired with it by :mod:`protocols.dicom.pairing` (same frame, or a rigid registration).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from protocols.case import TISSUE_HU, Case
from protocols.dicom.attributes import text
from protocols.dicom.ct import FIX_REEXPORT as CT_FIX_REEXPORT
from protocols.dicom.ct import CtSeries, read_ct_series
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.names import NameMatch, NameTable, is_body, match_names
from protocols.dicom.pairing import PairedMr, pair_mr
from protocols.dicom.rtdose import RtDose, read_rtdose
from protocols.dicom.rtplan import PlanSummary, describe_plan, read_rtplan
from protocols.dicom.rtstruct import StructureSet, rasterise_roi, read_structure_set
from protocols.dicom.series import Item, series_name
from protocols.masks import largest_component
from protocols.protocol import Protocol
from protocols.validation import CaseReport, Severity

NOT_USED = "not-used"  # the finding of a DICOM object of a kind the import does not use (PET, MR spectroscopy, ...)
FIX_DAMAGED = "re-export the file, or remove it if it is a damaged copy"


@dataclass
class PatientFiles:
    """The DICOM objects found for one patient, by kind; CT and MR slices grouped by series.

    ``truncated`` maps each file cut short to what is cut; a truncated CT or MR slice is in ``ct_series`` or
    ``mr_series`` too (its header only), so its series is known to be damaged; other truncated files are in no list.
    """

    patient_id: str
    ct_series: dict[str, list[Item]] = field(default_factory=dict)
    structure_sets: list[Item] = field(default_factory=list)
    doses: list[Item] = field(default_factory=list)
    plans: list[Item] = field(default_factory=list)
    unused: list[Item] = field(default_factory=list)
    truncated: dict[Path, str] = field(default_factory=dict)
    mr_series: dict[str, list[Item]] = field(default_factory=dict)
    registrations: list[Item] = field(default_factory=list)  # Spatial and Deformable Registration objects

    @property
    def folder(self) -> Path:
        """The deepest folder holding all of this patient's files."""
        paths = [str(p) for items in (*self.ct_series.values(), *self.mr_series.values(), self.structure_sets,
                                      self.doses, self.plans, self.registrations, self.unused)
                 for p, _ in items] + [str(p) for p in self.truncated]
        return Path(os.path.commonpath(paths)) if paths else Path()


def unused_object(ds: Dataset) -> str:
    """What an object of a kind the import does not use is, e.g. "MR object (1.2.840.10008.5.1.4.1.1.4)"."""
    return f"{text(ds, 'Modality', '?')} object ({text(ds, 'SOPClassUID', '?')})"


@dataclass
class DicomCase:
    """A case read from DICOM on its CT grid, with where it sits in patient space and what it came from; ``mr`` is
    the paired MR on its own grid (``case.mr`` holds it on the CT's), to resample it once onto another grid.
    """

    case: Case
    grid: VolumeGrid
    names: NameMatch
    plan: PlanSummary | None
    uids: dict[str, str]
    body: np.ndarray
    mr: PairedMr | None = None


def read_patient(files: PatientFiles, protocol: Protocol, table: NameTable,
                 report: CaseReport) -> DicomCase | None:
    """Read one patient into a case on its CT grid; None when an ERROR finding makes it unusable."""
    report_unread(files, report)
    sets = [s for path, ds in files.structure_sets if (s := read_structure_set(ds, path, report)) is not None]
    if not files.ct_series:
        _report_no_ct(files, report)
        return None
    if not sets:
        report.add(Severity.ERROR, "no-structure-set", "no readable RT Structure Set for this patient",
                   next(iter(files.ct_series.values()))[0][0].parent,
                   "export the structure set drawn on the planning CT together with it")
        return None
    pairs = [(s, uid) for s in sets if (uid := _ct_for(s, files, report)) is not None]
    if not pairs:
        return None
    structure_set, series_uid = _choose(pairs, files, report)
    slices = files.ct_series[series_uid]
    ct_frame = _frame_of(slices)
    if not _same_frame(structure_set, ct_frame):
        report.add(Severity.ERROR, "frame-mismatch", "the structure set's frame of reference "
                   f"{structure_set.frame_of_reference_uid} differs from its CT's {ct_frame}",
                   structure_set.path, "export the structure set with the CT it was drawn on (or register them)")
        return None
    cut = [path for path, _ in slices if path in files.truncated]
    for path in cut:
        report.add(Severity.ERROR, "truncated-slice", f"CT slice {path.name} is truncated: {files.truncated[path]}",
                   path, CT_FIX_REEXPORT)
    complete = check_referenced_images(structure_set, series_uid, slices, report)
    ct = None if cut else read_ct_series(slices, report)
    if ct is None or not complete:
        return None
    contoured = contoured_structures(structure_set, ct.grid, protocol, table, report)
    if contoured is None:
        return None
    names, structures = contoured
    body = _body(structure_set, ct, report)
    plan = linked_plan(files, structure_set, report)
    dose = _dose(files, ct, plan, report)
    if plan is not None:
        _check_plan(plan, protocol, report)
    if dose is not None:
        possible = body & _dose_support(dose, ct.grid)
        dose_gy = dose.on_grid(ct.grid)
    else:
        possible, dose_gy = body.copy(), None
    mr = pair_mr(files.mr_series, files.registrations, files.truncated, ct, body, report)
    case = Case(patient_id=report.patient_id, ct_hu=ct.ct_hu, spacing_mm=ct.grid.spacing_mm,
                structures=structures, possible_dose_mask=possible, dose_gy=dose_gy, source=ct.folder,
                mr=mr.on_grid(ct.grid) if mr is not None else None)
    uids = {"study": ct.study_uid, "ct_series": ct.series_uid, "frame_of_reference": ct.frame_of_reference_uid,
            "structure_set": structure_set.sop_instance_uid, "plan": plan.sop_instance_uid if plan else "",
            "mr_series": mr.series.series_uid if mr is not None else ""}
    return DicomCase(case, ct.grid, names, plan, uids, body, mr)


def report_unread(files: PatientFiles, report: CaseReport) -> None:
    """A patient's files the import does not read: objects of other kinds (noted) and truncated RT objects."""
    for path, ds in files.unused:
        report.add(Severity.NOTE, NOT_USED, f"{unused_object(ds)} is not used by the import", path)
    in_series = {path for items in (*files.ct_series.values(), *files.mr_series.values()) for path, _ in items}
    for path, cut in files.truncated.items():
        if path not in in_series:
            report.add(Severity.WARNING, "truncated-file", f"{path.name} is truncated: {cut}; not used", path,
                       FIX_DAMAGED)


def _report_no_ct(files: PatientFiles, report: CaseReport) -> None:
    """The error of a patient without a CT series, naming what it has instead (e.g. only an MR series, by its files)."""
    mr = [sorted(items, key=lambda item: item[0]) for _, items in sorted(files.mr_series.items())]
    others = sorted({text(ds, "Modality", "?") for _, ds in files.unused} | ({"MR"} if mr else set()))
    where = [items[0][0] for items in mr] + [
        path for path, _ in files.structure_sets or files.doses or files.plans or files.registrations or files.unused
    ] + list(files.truncated)
    message, fix = "no CT image series for this patient", "export the planning CT series together with the RT objects"
    if others:
        message = f"{', '.join(others)} images but no planning CT for this patient (the import needs the CT; an MR " \
                  "is only imported paired with one)"
    if mr:
        message += f"; MR: {', '.join(series_name(items, 'MR') for items in mr)}"
        fix += ("; an MRI-only patient (MR + structure set drawn on it) is planned on a synthetic CT by "
                "`fedrt plan FOLDER --sct-model MODEL` (or --sct bulk)")
    report.add(Severity.ERROR, "no-ct", message, where[0], fix)


def _choose(pairs: list[tuple[StructureSet, str]], files: PatientFiles,
            report: CaseReport) -> tuple[StructureSet, str]:
    """The structure set to import with its CT series: on that CT's frame of reference first, then linked to it by
    series reference, then the newest; the others are reported with why they were skipped.
    """
    def rank(pair: tuple[StructureSet, str]) -> tuple[bool, bool, str]:
        structure_set, uid = pair
        return (_same_frame(structure_set, _frame_of(files.ct_series[uid])),
                uid in structure_set.referenced_series_uids, structure_set.date)

    ranked = sorted(pairs, key=rank, reverse=True)
    chosen = ranked[0]
    if len(ranked) > 1:
        skipped = ", ".join(f"{pair[0].path.name} ({_why_skipped(rank(pair), rank(chosen))})" for pair in ranked[1:])
        report.add(Severity.WARNING, "several-structure-sets", f"{len(ranked)} structure sets; imported "
                   f"{chosen[0].path.name}, skipped {skipped}", chosen[0].path,
                   "export one plan's CT, structure set and dose per patient")
    return chosen


def _why_skipped(rank: tuple[bool, bool, str], chosen: tuple[bool, bool, str]) -> str:
    """Why a structure set of this rank lost to the chosen one: the first criterion of :func:`_choose` it fails."""
    reasons = ("its frame of reference differs from its CT's", "it does not reference its CT series", "older")
    return next((why for why, own, best in zip(reasons, rank, chosen, strict=True) if own != best),
                "as recent; the first by file name was imported")


def _frame_of(slices: list[Item]) -> str:
    """A CT series' frame of reference, as its first slice states it."""
    return text(slices[0][1], "FrameOfReferenceUID")


def _same_frame(structure_set: StructureSet, ct_frame: str) -> bool:
    """Whether a structure set lies on a CT's frame of reference; a frame the vendor left out matches any."""
    return not structure_set.frame_of_reference_uid or not ct_frame or structure_set.frame_of_reference_uid == ct_frame


def check_referenced_images(structure_set: StructureSet, series_uid: str, slices: list[Item],
                            report: CaseReport, modality: str = "CT") -> bool:
    """Whether the series (of ``modality``) holds every image of it the structure set references; an ERROR names
    what is missing (a partial export would lose contours without a word).
    """
    referenced = structure_set.referenced_images.get(series_uid, set())
    absent = referenced - {text(ds, "SOPInstanceUID") for _, ds in slices}
    if absent:
        report.add(Severity.ERROR, f"incomplete-{modality.lower()}", f"the structure set references "
                   f"{len(referenced)} images of {modality} series {series_uid}; {len(absent)} of them are not in "
                   f"the folder, which holds {len(slices)}", slices[0][0].parent,
                   "export the complete series the structure set was drawn on (all its slices)")
    return not absent


def _ct_for(structure_set: StructureSet, files: PatientFiles, report: CaseReport) -> str | None:
    """The CT series a structure set was drawn on: by series reference, else (reported when it references a series
    that is absent) by :func:`_ct_by_frame`.
    """
    by_reference = [uid for uid in structure_set.referenced_series_uids if uid in files.ct_series]
    if by_reference:
        return by_reference[0]
    found = _ct_by_frame(structure_set, files, report)
    if found is None:
        return None
    uid, how = found
    if structure_set.referenced_series_uids:
        report.add(Severity.WARNING, "referenced-series-absent", "the structure set references CT series "
                   f"{', '.join(sorted(structure_set.referenced_series_uids))}, which is not in the folder; used "
                   f"series {uid} ({len(files.ct_series[uid])} slices, {how}) instead", structure_set.path,
                   "check the contours overlay this CT, or export the CT series the structure set references with it")
    return uid


def _ct_by_frame(structure_set: StructureSet, files: PatientFiles, report: CaseReport) -> tuple[str, str] | None:
    """A CT series for a structure set without a usable series reference, with how it was found: by frame of
    reference, image reference, or (reported) the only CT series of its study.
    """
    series = files.ct_series
    frame = structure_set.frame_of_reference_uid
    same_frame = [uid for uid, items in series.items() if _frame_of(items) == frame]
    by_images = [uid for uid, items in series.items()
                 if structure_set.referenced_image_uids & {text(ds, "SOPInstanceUID") for _, ds in items}]
    if frame and same_frame:
        return max(same_frame, key=lambda uid: (uid in by_images, len(series[uid]))), "same frame of reference"
    if by_images:
        return by_images[0], "it holds images the contours reference"
    if not frame:
        same_study = [uid for uid, items in series.items()
                      if text(items[0][1], "StudyInstanceUID") == structure_set.study_uid] or list(series)
        if len(same_study) == 1:
            report.add(Severity.WARNING, "assumed-frame", "the structure set names no frame of reference or CT; "
                       "assumed the study's only CT series", structure_set.path,
                       "none needed if the contours overlay the CT; otherwise re-export with references")
            return same_study[0], "the study's only CT series"
    report.add(Severity.ERROR, "no-ct-for-structures", "none of the CT series is the one the structure set was "
               f"drawn on (frame of reference {frame or '(none)'})", structure_set.path,
               "export the CT series the structure set references together with it")
    return None


def report_names(names: NameMatch, empty: list[str], path: Path, report: CaseReport) -> None:
    """The name match as findings: what matched how, what was not used, what is missing, what clashed."""
    matched = ", ".join(f"{c} <- {r!r}" + ("" if names.how[c] == "exact" else f" ({names.how[c]})")
                        for c, r in names.matched.items())
    report.add(Severity.NOTE, "names-matched", matched or "no ROI name matched", path)
    if names.unmatched:
        report.add(Severity.NOTE, "names-unmatched", f"not used: {', '.join(names.unmatched)}", path)
    for name in names.missing:
        report.add(Severity.NOTE, "missing-roi", f"{name} not contoured", path)
    if empty:
        report.add(Severity.NOTE, "empty-roi", f"ROIs without contours: {', '.join(empty)}", path)
    for canonical, candidates in names.ambiguous.items():
        report.add(Severity.WARNING, "ambiguous-name", f"{len(candidates)} ROIs match {canonical} "
                   f"({', '.join(map(repr, candidates))}); used {candidates[0]!r}", path,
                   f"map the right one in a --names override file, e.g. '{canonical}: [{candidates[0]}]'")


def contoured_structures(structure_set: StructureSet, grid: VolumeGrid, protocol: Protocol, table: NameTable,
                         report: CaseReport, modality: str = "CT") -> tuple[NameMatch, dict[str, np.ndarray]] | None:
    """The protocol's structures the structure set draws: ROI names matched (the match reported) and rasterised on the
    grid of the image (``modality``) they were drawn on; None after an ERROR when no ROI is a target of the protocol.
    """
    drawn = [roi for roi in structure_set.rois if roi.contours]
    empty = [roi.name for roi in structure_set.rois if not roi.contours]
    names = match_names([roi.name for roi in drawn], table)
    report_names(names, empty, structure_set.path, report)
    if not any(t in names.matched for t in protocol.targets):
        report.add(Severity.ERROR, "no-target", f"no ROI matches a target of {protocol.name} "
                   f"({', '.join(protocol.targets)}); ROI names: {', '.join(r.name for r in drawn)}",
                   structure_set.path, "name the targets as the protocol does, or map them in a --names override file")
        return None
    by_name = {roi.name: roi for roi in drawn}
    structures = {c: rasterise_roi(by_name[r], grid, report, structure_set.path) for c, r in names.matched.items()}
    for name, mask in structures.items():
        if not mask.any():
            report.add(Severity.WARNING, "empty-mask", f"{name} ({names.matched[name]}) covers no {modality} voxel",
                       structure_set.path, f"check the contours lie inside the {modality} volume")
    return names, structures


def _body(structure_set: StructureSet, ct: CtSeries, report: CaseReport) -> np.ndarray:
    """The patient outline: the EXTERNAL ROI when there is one, else the largest CT region above ``TISSUE_HU``."""
    outline = [roi for roi in structure_set.rois if roi.contours and is_body(roi.name, roi.interpreted_type)]
    if outline:
        mask = rasterise_roi(outline[0], ct.grid, report, structure_set.path)
        if mask.any():
            return mask
    mask = largest_component(ct.ct_hu > TISSUE_HU)
    if not mask.any():
        return mask
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    for k in range(box[2].start, box[2].stop):
        mask[box[0], box[1], k] = ndimage.binary_fill_holes(mask[box[0], box[1], k])
    return mask


def linked_plan(files: PatientFiles, structure_set: StructureSet, report: CaseReport) -> PlanSummary | None:
    """The patient's RT Plan: the one referencing the structure set, else the only one (a NOTE describes it)."""
    plans = [p for path, ds in files.plans if (p := read_rtplan(ds, path, report)) is not None]
    linked = [p for p in plans if structure_set.sop_instance_uid in p.referenced_structure_set_uids]
    chosen = linked[0] if linked else plans[0] if len(plans) == 1 else None
    if chosen is not None:
        report.add(Severity.NOTE, "plan", describe_plan(chosen), chosen.path)
    return chosen


def _dose(files: PatientFiles, ct: CtSeries, plan: PlanSummary | None, report: CaseReport) -> RtDose | None:
    """The total plan dose: the one PLAN dose (the planned plan's, if several), or the sum of BEAM doses."""
    doses = [d for path, ds in files.doses if (d := read_rtdose(ds, path, report)) is not None]
    doses = [d for d in doses if d.frame_of_reference_uid in ("", ct.frame_of_reference_uid)]
    if not doses:
        report.add(Severity.WARNING, "no-dose", "no usable RT Dose on this CT's frame of reference",
                   files.doses[0][0] if files.doses else ct.folder,
                   "export the plan dose (RTDOSE, DoseSummationType PLAN) to use this patient for dose training")
        return None
    whole = [d for d in doses if d.summation_type in ("PLAN", "")]
    if len(whole) > 1 and plan is not None:
        whole = [d for d in whole if plan.sop_instance_uid in d.referenced_plan_uids] or whole
    if len(whole) == 1:
        return whole[0]
    if len(whole) > 1:
        report.add(Severity.ERROR, "ambiguous-dose", f"{len(whole)} plan doses and no plan telling which to use: "
                   f"{', '.join(d.path.name for d in whole)}", whole[0].path,
                   "export one plan's dose per patient (or the plan that references it)")
        return None
    beams = [d for d in doses if d.summation_type == "BEAM"]
    if beams and len({d.referenced_plan_uids for d in beams}) == 1:
        total = sum(d.on_grid(ct.grid) for d in beams)
        report.add(Severity.NOTE, "beam-doses-summed", f"summed {len(beams)} per-beam doses", beams[0].path)
        return RtDose(total, ct.grid, beams[0].path, ct.frame_of_reference_uid, "PLAN", beams[0].referenced_plan_uids)
    kinds = sorted({d.summation_type for d in doses})
    report.add(Severity.ERROR, "dose-summation", f"no whole-plan dose (DoseSummationType {', '.join(kinds)})",
               doses[0].path, "export the total plan dose (DoseSummationType PLAN)")
    return None


def _dose_support(dose: RtDose, grid: VolumeGrid) -> np.ndarray:
    """CT voxels inside the dose grid (where the dose is known)."""
    ones = np.ones(dose.grid.shape, dtype=np.float32)
    return RtDose(ones, dose.grid, dose.path, "", "", ()).on_grid(grid) >= 0.5


def _check_plan(plan: PlanSummary, protocol: Protocol, report: CaseReport) -> None:
    if plan.fractions and plan.fractions != protocol.fractions:
        report.add(Severity.WARNING, "fractions", f"the plan has {plan.fractions} fractions, protocol "
                   f"{protocol.name} {protocol.fractions}", plan.path, "check the patient belongs to this protocol")
    rx = plan.target_prescriptions_gy
    if rx and abs(rx[0] - protocol.max_prescription_gy) > 0.01 * protocol.max_prescription_gy:
        report.add(Severity.WARNING, "prescription", f"the plan prescribes {rx[0]:g} Gy, protocol {protocol.name} "
                   f"{protocol.max_prescription_gy:g} Gy", plan.path, "check the patient belongs to this protocol")
