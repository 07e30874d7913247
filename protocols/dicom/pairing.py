"""Pair an MR series with the planning CT: on the CT's Frame of Reference, or through a rigid Spatial Registration.

Any other MR (another frame and no registration linking it to the CT's, a registration that is not rigid, a series
that cannot be read) is not used: a WARNING names its file, the reason and the fix. Of several pairable MRs one is
used, chosen in this order: a T1-weighted series by its SeriesDescription (the contrast the MR tasks learn from),
one on the CT's own frame (no registration to trust), the most slices, the lowest SeriesInstanceUID; a NOTE says
which and how it was paired. The MR is put on a CT grid by the CT's own trilinear resampling, through the rigid
transform when there is one (:func:`protocols.dicom.geometry.resample_rigid`); CT voxels outside the MR's field of
view get 0 (no signal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocols.dicom.attributes import text
from protocols.dicom.geometry import VolumeGrid, resample_rigid
from protocols.dicom.mr import FIX_REEXPORT, read_mr_series
from protocols.dicom.registration import SpatialRegistration, find_transform, read_registration
from protocols.dicom.series import ImageSeries, Item, series_name
from protocols.validation import CaseReport, Severity

FIX_PAIR = "export the MR with a spatial registration to the CT, or register it in the TPS"
MR_OUTSIDE_TOLERANCE = 0.05  # more of the CT's body than this outside the MR's field of view is a warning
T1 = re.compile(r"(?<![a-z0-9])t1(?!\d)", re.IGNORECASE)  # "T1", "t1_mprage", "AX T1W POST"; not "ST1", "T12"


@dataclass
class PairedMr:
    """The MR paired with the CT: its volume on its own grid and the rigid matrix taking its points to the CT's."""

    series: ImageSeries
    ct_from_mr: np.ndarray  # 4x4, LPS mm; the identity on the CT's own frame
    how: str  # "same frame of reference" or "spatial registration FILE"

    def on_grid(self, grid: VolumeGrid) -> np.ndarray:
        """The MR (float32) on a grid of the CT's frame, trilinear; 0 (no signal) outside the MR's field of view."""
        return resample_rigid(self.series.values, self.series.grid, grid, np.linalg.inv(self.ct_from_mr), cval=0.0)

    def covers(self, grid: VolumeGrid) -> np.ndarray:
        """Which voxels of a grid of the CT's frame lie inside the MR's field of view."""
        ones = np.ones(self.series.grid.shape, dtype=np.float32)
        return resample_rigid(ones, self.series.grid, grid, np.linalg.inv(self.ct_from_mr), cval=0.0) > 0.5


@dataclass
class _Candidate:
    """An MR series that can be paired with the CT, and how."""

    uid: str
    slices: list[Item]
    ct_from_mr: np.ndarray
    how: str
    registration: Path | None

    def rank(self) -> tuple[bool, bool, int, str]:
        """Sort key, best first: T1-weighted, on the CT's frame, most slices, lowest UID."""
        description = text(self.slices[0][1], "SeriesDescription")
        return (not T1.search(description), self.registration is not None, -len(self.slices), self.uid)


def pair_mr(mr_series: dict[str, list[Item]], registrations: list[Item], truncated: dict[Path, str],
            ct: ImageSeries, body: np.ndarray, report: CaseReport) -> PairedMr | None:
    """The MR to pair with the CT, or None; every MR series and registration not used is reported.

    Args:
        mr_series: the patient's MR slices by SeriesInstanceUID (headers of truncated files included).
        registrations: the patient's Spatial (and Deformable) Registration objects.
        truncated: files cut short, with what is cut.
        ct: the planning CT, whose frame and grid the MR must reach.
        body: the patient's outline on the CT's grid, to report how much of it the MR misses.
        report: the patient's report; unpaired or unreadable MRs are WARNINGs, the choice a NOTE.
    """
    read = [r for path, ds in registrations if (r := read_registration(ds, path, report)) is not None]
    candidates = [c for uid, slices in sorted(mr_series.items())
                  if (c := _candidate(uid, sorted(slices, key=lambda item: item[0]), read, ct, report)) is not None]
    paired, chosen = None, None
    for candidate in sorted(candidates, key=_Candidate.rank):
        series = _read(candidate, truncated, report)
        if series is not None:
            paired, chosen = PairedMr(series, candidate.ct_from_mr, candidate.how), candidate
            _report_choice(candidate, candidates, report)
            break
    for registration in read:
        if chosen is None or registration.path != chosen.registration:
            report.add(Severity.NOTE, "not-used", "spatial registration not used by the import (it pairs no MR with "
                       "the CT)", registration.path)
    if paired is not None:
        _check_field_of_view(paired, ct.grid, body, report)
    return paired


def _candidate(uid: str, slices: list[Item], registrations: list[SpatialRegistration], ct: ImageSeries,
               report: CaseReport) -> _Candidate | None:
    """The series as a pairing candidate, or None after a WARNING saying why it cannot be paired."""
    frame, ct_frame = text(slices[0][1], "FrameOfReferenceUID"), ct.frame_of_reference_uid
    if frame and frame == ct_frame:
        return _Candidate(uid, slices, np.eye(4), "same frame of reference", None)
    mapping = find_transform(registrations, frame, ct_frame)
    if mapping.matrix is not None:
        return _Candidate(uid, slices, mapping.matrix, f"spatial registration {mapping.path.name}", mapping.path)
    if not frame:
        why = "it names no Frame of Reference"
    else:
        why = f"its Frame of Reference {frame} is not the CT's {ct_frame}, and {mapping.problem}"
    report.add(Severity.WARNING, "mr-not-paired", f"{_name(slices)} is not paired with the CT: {why}; the MR is "
               "not used", slices[0][0], FIX_PAIR)
    return None


def _read(candidate: _Candidate, truncated: dict[Path, str], report: CaseReport) -> ImageSeries | None:
    """The candidate's volume, or None after WARNINGs (the reader's errors, downgraded: the CT is still usable)."""
    cut = [path for path, _ in candidate.slices if path in truncated]
    for path in cut:
        report.add(Severity.WARNING, "truncated-slice", f"MR slice {path.name} is truncated: {truncated[path]}; the "
                   "MR is not used", path, FIX_REEXPORT)
    if cut:
        return None
    own = CaseReport(report.patient_id, report.path)
    series = read_mr_series(candidate.slices, own)
    for finding in own.findings:
        unusable = finding.severity is Severity.ERROR
        report.add(Severity.WARNING if unusable else finding.severity, finding.code,
                   finding.message + ("; the MR is not used" if unusable else ""), finding.path, finding.fix)
    return series


def _report_choice(chosen: _Candidate, candidates: list[_Candidate], report: CaseReport) -> None:
    """A NOTE naming the MR used and how it was paired, and the other pairable ones."""
    others = [c for c in candidates if c is not chosen]
    skipped = f"; {len(others)} other pairable MR series not used: {', '.join(_name(c.slices) for c in others)}" \
        if others else ""
    report.add(Severity.NOTE, "mr-paired", f"{_name(chosen.slices)} paired with the CT by {chosen.how}{skipped}",
               chosen.slices[0][0])


def _check_field_of_view(paired: PairedMr, grid: VolumeGrid, body: np.ndarray, report: CaseReport) -> None:
    """A WARNING when more than ``MR_OUTSIDE_TOLERANCE`` of the body on the CT lies outside the MR."""
    if not body.any():
        return
    outside = float((body & ~paired.covers(grid)).sum() / body.sum())
    if outside > MR_OUTSIDE_TOLERANCE:
        report.add(Severity.WARNING, "mr-field-of-view", f"{outside:.0%} of the patient's body on the CT lies "
                   "outside the MR's field of view; the MR is 0 (no signal) there", paired.series.folder,
                   "export an MR that covers the planning CT's region, or check the registration")


def _name(slices: list[Item]) -> str:
    """An MR series as findings name it: its files and, when it has one, its description."""
    description = text(slices[0][1], "SeriesDescription")
    return series_name(slices, "MR") + (f" '{description}'" if description else "")
