"""``fedrt predict --model MODEL --data PATH --out DIR``: dose as OpenKBP prediction files, or OAR masks."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from protocols.files import refuse_non_empty, staged_folder
from protocols.openkbp import write_sparse_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="run a trained model on a dataset or one patient")
    parser.add_argument("--model", required=True, help="checkpoint file, or MLflow model URI models:/NAME@ALIAS")
    parser.add_argument("--data", required=True, help="a dataset folder or one patient folder (OpenKBP layout)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--policy", default="warn", choices=["ignore", "warn", "raise"],
                        help="what to do with flawed input cases (default warn: report and skip)")
    parser.set_defaults(run=run)


def write_masks(patient_dir: Path, masks: dict[str, np.ndarray]) -> None:
    """One OpenKBP mask file per structure (``,data`` header, ``flat_index,`` rows), the patient folder atomically."""
    with staged_folder(patient_dir, replace=True) as staging:
        for name, mask in masks.items():
            write_sparse_csv(staging / f"{name}.csv", mask, True, "%g")


def run(args: argparse.Namespace) -> int:
    from models import loop
    from models.checkpoint import load_checkpoint
    from models.registry import resolve_model
    from protocols.dataset import ProtocolDataset
    from protocols.openkbp import write_prediction

    out = Path(args.out)
    refuse_non_empty(out, "choose another --out or delete it")
    model = load_checkpoint(resolve_model(args.model))
    task = model.task
    dataset = ProtocolDataset(Path(args.data), task.protocol, args.policy, require_dose=False)
    written = 0
    for patient_dir in tqdm(dataset.patient_dirs, desc=f"predict {task.name}", unit="patient"):
        case, _ = dataset.load(patient_dir)
        if case is None:
            continue
        prediction = loop.predict(model.network, task, case)
        if task.name == "dose":
            write_prediction(out / f"{case.patient_id}.csv", prediction)
        else:
            write_masks(out / case.patient_id, prediction)
        written += 1
    print(f"{written} of {len(dataset)} patients predicted into {out}")
    return 0 if written == len(dataset) else 1
