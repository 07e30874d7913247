"""``fedrt predict --model MODEL --data PATH --out DIR``: dose as OpenKBP prediction files, or OAR masks."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="run a trained model on a dataset or one patient")
    parser.add_argument("--model", required=True, help="checkpoint file, or MLflow model URI models:/NAME@ALIAS")
    parser.add_argument("--data", required=True, help="a dataset folder or one patient folder (OpenKBP layout)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--policy", default="warn", choices=["ignore", "warn", "raise"],
                        help="what to do with flawed input cases (default warn: report and skip)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models import loop
    from models.checkpoint import load_checkpoint
    from models.registry import resolve_model
    from protocols.dataset import ProtocolDataset
    from protocols.files import refuse_non_empty

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
        task.write_prediction(case, prediction, out)
        written += 1
    print(f"{written} of {len(dataset)} patients predicted into {out}")
    return 0 if written == len(dataset) else 1
