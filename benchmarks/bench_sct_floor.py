"""Benchmark (issue 16): the synthetic-CT MAE of voxel-by-voxel oracles on the simulated MR, a reference for the
60 HU target.

The simulated MR (``protocols.simulated_mr``) is a function of each voxel's tissue class only, so the HU spread
inside a class (CT noise, marrow against compact bone, partial volume) cannot be read off the MR voxel itself. Two
oracles that are given the truth a model has to infer, each predicting one HU per class (the class's median over
``SAMPLES_PER_CLASS_AND_PATIENT`` voxels drawn from each training patient's body, so patients weigh about equally),
scored with the task's MAE on the validation patients:

- **tissue-class oracle**: knows every voxel's tissue class exactly (no noise, blur or bias to see through);
- **signal oracle**: knows only what an ideal noiseless MR voxel shows: air and cortical bone, which both give no
  signal, are one class to it.

A model can do better than the tissue-class oracle only through anatomical context (where a bone is, how thick).

    python benchmarks/bench_sct_floor.py --data DATASET --out DIR

DATASET: the shared patients with a simulated MR (``fedrt data simulate-mr ../shared/data/openkbp DATASET --seed 1``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLES_PER_CLASS_AND_PATIENT = 20000  # training voxels drawn per class and patient for the class medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a simulated-MR dataset (fedrt data simulate-mr)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from models.tasks.sct import AIR_HU
    from protocols.case import Case
    from protocols.dataset import ProtocolDataset
    from protocols.metrics import SCT_HU_RANGE, sct_mae_hu
    from protocols.protocol import load_protocol
    from protocols.simulated_mr import Tissue, classify_tissue

    protocol = load_protocol("hn-openkbp")
    signal_class = np.array([Tissue.AIR if t == Tissue.CORTICAL_BONE else t for t in Tissue])  # no signal = air
    oracles = {"tissue-class oracle": np.arange(len(Tissue)), "signal oracle": signal_class}

    def cases(split: str) -> Iterator[tuple[Case, np.ndarray, np.ndarray, np.ndarray]]:
        """Each patient of ``split``: the case, its MR body, its tissue classes and its clipped HU."""
        for case in ProtocolDataset(args.data / split, protocol, require_dose=False).cases():
            body = case.mr_body()
            yield case, body, classify_tissue(case.ct_hu, body), np.clip(case.ct_hu, *SCT_HU_RANGE)

    rng = np.random.default_rng(0)
    samples: dict[str, dict[int, list[np.ndarray]]] = {name: {} for name in oracles}
    for _, body, tissue, hu in cases("train-pats"):
        for name, classes in oracles.items():
            labels = classes[tissue]
            for label in np.unique(labels[body]):
                values = hu[body & (labels == label)]
                draw = rng.choice(values, min(values.size, SAMPLES_PER_CLASS_AND_PATIENT), replace=False)
                samples[name].setdefault(int(label), []).append(draw)
    medians = {name: {label: float(np.median(np.concatenate(parts))) for label, parts in by_label.items()}
               for name, by_label in samples.items()}

    per_patient: dict[str, dict[str, float]] = {name: {} for name in oracles}
    error_share: dict[str, dict[str, list[float]]] = {name: {t.name: [] for t in Tissue} for name in oracles}
    for case, body, tissue, hu in cases("validation-pats"):
        for name, classes in oracles.items():
            lookup = np.array([medians[name].get(int(classes[t]), AIR_HU) for t in Tissue])
            prediction = np.where(body, lookup[tissue], AIR_HU)
            per_patient[name][case.patient_id] = sct_mae_hu(case.ct_hu, prediction, body)
            error = np.abs(hu - prediction)
            for t in Tissue:  # each tissue's part of the MAE: its summed error over the body's voxel count
                error_share[name][t.name].append(float(error[body & (tissue == t)].sum() / body.sum()))

    result = {
        "machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "data": str(args.data),
        "medians_hu": {name: {Tissue(label).name: round(value, 1) for label, value in by_label.items()}
                       for name, by_label in medians.items()},
        "oracles": {name: {"mae_hu": statistics.mean(scores.values()),
                           "per_patient": scores,
                           "mae_part_by_tissue_hu": {t: statistics.mean(v) for t, v in error_share[name].items()}}
                    for name, scores in per_patient.items()},
    }
    (args.out / "sct-floor.json").write_text(json.dumps(result, indent=1))
    for name, entry in result["oracles"].items():
        parts = ", ".join(f"{t} {v:.1f}" for t, v in entry["mae_part_by_tissue_hu"].items())
        print(f"{name}: MAE {entry['mae_hu']:.1f} HU (patients {min(entry['per_patient'].values()):.1f}-"
              f"{max(entry['per_patient'].values()):.1f}); by tissue: {parts}")


if __name__ == "__main__":
    main()
