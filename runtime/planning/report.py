"""The plan review report: an HTML page with dose slices and contours, DVHs (plan vs target dose), the clinical-goal
table of the protocol (plan and target dose, pass/fail), the plan's beams and the timing breakdown.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from protocols.case import Case
from protocols.metrics import GoalResult, dvh_curve, evaluate_goals
from protocols.protocol import Protocol
from runtime.planning.plan import PlanResult

COLOURS = plt.get_cmap("tab10").colors


def _structures(case: Case, protocol: Protocol) -> list[str]:
    return [n for n in protocol.structure_names if case.mask(n).any()]


def dose_slices_png(path: Path, case: Case, protocol: Protocol, dose_gy: np.ndarray, centre_index) -> Path:
    """Axial, coronal and sagittal slices through ``centre_index``: CT, dose colour wash, structure contours."""
    i, j, k = (int(v) for v in centre_index)
    s0, s1, s2 = case.spacing_mm
    views = [("axial", lambda a: a[:, :, k], s0 / s1), ("coronal", lambda a: a[i, :, :].T, s2 / s1),
             ("sagittal", lambda a: a[:, j, :].T, s2 / s0)]
    vmax = float(max(dose_gy.max(), 1e-6))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    names = _structures(case, protocol)
    for ax, (title, cut, aspect) in zip(axes, views, strict=True):
        ax.imshow(cut(case.ct_hu), cmap="gray", vmin=-400, vmax=600, aspect=aspect)
        d = cut(dose_gy)
        wash = ax.imshow(np.ma.masked_less(d, 0.05 * vmax), cmap="jet", alpha=0.45, vmin=0, vmax=vmax, aspect=aspect)
        for n, name in enumerate(names):
            m = cut(case.mask(name))
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors=[COLOURS[n % 10]], linewidths=1.0)
        ax.set_title(title)
        ax.axis("off")
    fig.colorbar(wash, ax=axes, shrink=0.8, label="dose (Gy)")
    handles = [plt.Line2D([], [], color=COLOURS[n % 10], label=name) for n, name in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 10), fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def dvh_png(path: Path, case: Case, protocol: Protocol, plan_dose: np.ndarray, target_dose: np.ndarray) -> Path:
    """Cumulative DVHs of every contoured structure: plan (solid) and target dose (dashed)."""
    fig, ax = plt.subplots(figsize=(9, 6))
    top = float(max(plan_dose.max(), target_dose.max()))
    bins = np.linspace(0, top * 1.02, 200)
    for n, name in enumerate(_structures(case, protocol)):
        mask = case.mask(name)
        colour = COLOURS[n % 10]
        for dose, style in ((plan_dose, "-"), (target_dose, "--")):
            curve = dvh_curve(dose, mask, bins)
            ax.plot(curve.dose_gy, 100 * curve.volume_fraction, style, color=colour,
                    label=name if style == "-" else None)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_title("DVH: plan (solid) vs target dose (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _cell(result: GoalResult) -> str:
    if result.value_gy is None:
        return "<td>-</td><td>not contoured</td>"
    status = "pass" if result.passed else "FAIL"
    return f'<td>{result.value_gy:.1f}</td><td class="{status.lower()}">{status}</td>'


def write_report(folder: Path, case: Case, protocol: Protocol, plan: PlanResult, target_dose_gy: np.ndarray,
                 target_label: str, timings_s: dict[str, float], warnings: list[str] = ()) -> Path:
    """Write ``report.html`` and its PNGs into ``folder``; returns the HTML path (``warnings`` listed on top)."""
    folder.mkdir(parents=True, exist_ok=True)
    centre = np.rint(plan.frame.to_index(np.asarray([plan.isocenter_lps]))[0]).astype(int)
    centre = np.clip(centre, 0, np.asarray(case.shape) - 1)
    dose_slices_png(folder / "plan_dose.png", case, protocol, plan.dose_gy, centre)
    dose_slices_png(folder / "target_dose.png", case, protocol, target_dose_gy, centre)
    dvh_png(folder / "dvh.png", case, protocol, plan.dose_gy, target_dose_gy)
    plan_goals = evaluate_goals(plan.dose_gy, case.structures, case.voxel_volume_mm3, protocol)
    target_goals = evaluate_goals(target_dose_gy, case.structures, case.voxel_volume_mm3, protocol)
    rows = "\n".join(f"<tr><td>{html.escape(p.goal.label)}</td><td>{p.limit_gy:.1f}</td>{_cell(t)}{_cell(p)}</tr>"
                     for p, t in zip(plan_goals, target_goals, strict=True))
    met = [sum(bool(r.passed) for r in goals) for goals in (plan_goals, target_goals)]
    evaluated = sum(r.passed is not None for r in plan_goals)
    beams = "\n".join(f"<tr><td>{b.gantry_deg:g}</td><td>{len(s.segments)}</td><td>{s.mu / plan.fractions:.1f}</td>"
                      f"<td>{g.n_beamlets}</td></tr>"
                      for b, s, g in zip(plan.beams, plan.sequences, plan.grids, strict=True))
    total = sum(timings_s.values())
    times = "\n".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in timings_s.items())
    iso = ", ".join(f"{v:g}" for v in plan.isocenter_lps)
    rx = ", ".join(f"{t} {protocol.structure(t).prescription_gy:g} Gy" for t in protocol.targets
                   if case.mask(t).any())
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    notes = f'<h2>Warnings</h2><ul class="fail">{notes}</ul>' if notes else ""
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>fedrt plan {html.escape(case.patient_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
.pass{{color:#080}} .fail{{color:#c00;font-weight:bold}} img{{max-width:100%}}</style></head><body>
<h1>Plan review: {html.escape(case.patient_id)} ({html.escape(protocol.name)})</h1>
<p>Mimicked dose: {html.escape(target_label)}. {len(plan.beams)} coplanar 6 MV beams, isocentre ({iso}) mm LPS,
{plan.n_segments} step-and-shoot segments, {plan.total_mu / plan.fractions:.0f} MU per fraction,
{plan.fractions} fractions, prescription {html.escape(rx)}. The plan dose is recomputed from the MLC segments.
Clinical goals met: plan {met[0]}, target dose {met[1]}, of {evaluated}.</p>
<p><b>For review by a qualified physicist: not for treatment without independent dose verification.</b></p>
{notes}
<h2>Clinical goals</h2>
<table><tr><th>goal</th><th>limit (Gy)</th><th>target dose (Gy)</th><th></th><th>plan (Gy)</th><th></th></tr>
{rows}</table>
<h2>Plan dose</h2><img src="plan_dose.png" alt="plan dose slices">
<h2>Target dose</h2><img src="target_dose.png" alt="target dose slices">
<h2>Dose-volume histograms</h2><img src="dvh.png" alt="DVH">
<h2>Beams</h2>
<table><tr><th>gantry (deg)</th><th>segments</th><th>MU per fraction</th><th>beamlets</th></tr>
{beams}</table>
<h2>Timing</h2>
<table><tr><th>stage</th><th>seconds</th></tr>
{times}<tr><td><b>total</b></td><td><b>{total:.1f}</b></td></tr></table>
<p>Optimiser: {plan.optimisation.iterations} L-BFGS-B iterations, {html.escape(plan.optimisation.message)}.</p>
</body></html>
"""
    path = folder / "report.html"
    path.write_text(page)
    return path
