"""Benchmark: centralised training on the shared OpenKBP training patients, scored on the validation patients.

Runs ``fedrt train``, ``fedrt predict`` and (for dose) ``fedrt evaluate`` as separate processes, and reports
the scores, inference time per patient and the peak memory of training and of inference. Usage:

    python benchmarks/bench_training.py --task dose --out bench-out [overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "openkbp"


def run(cmd: list[str]) -> tuple[str, float, float]:
    """Run one fedrt process; returns its stdout, wall seconds and its own peak RSS in MiB (``wait4`` reports
    that child's usage alone, where RUSAGE_CHILDREN would keep the largest of all earlier children).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out)
    return out, time.perf_counter() - start, usage.ru_maxrss / 1024


def seg_scores(model: Path) -> dict:
    from models import loop
    from models.checkpoint import load_checkpoint
    from protocols.dataset import ProtocolDataset

    loaded = load_checkpoint(model)
    cases = list(ProtocolDataset(DATA / "validation-pats", loaded.task.protocol).cases())
    return loop.evaluate(loaded.network, loaded.task, cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=["dose", "seg"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fedrt = [sys.executable, "-m", "fedrt.cli"]
    model = args.out / f"{args.task}.pt"
    train_out, train_s, train_mib = run([*fedrt, "train", f"task={args.task}", f"data.root={DATA}", "preset=cpu60",
                                         "data.max_val_cases=0", f"output={model}", *args.overrides])
    predictions = args.out / f"{args.task}-predictions"
    _, predict_s, predict_mib = run([*fedrt, "predict", "--model", str(model), "--data",
                                     str(DATA / "validation-pats"), "--out", str(predictions)])
    result = {"task": args.task, "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
              "date": time.strftime("%Y-%m-%d"), "overrides": args.overrides,
              "train_minutes": train_s / 60, "train_peak_mib": train_mib, "predict_seconds_per_patient":
              predict_s / 10, "predict_peak_mib": predict_mib, "train_log_tail": train_out.strip().splitlines()[-3:]}
    if args.task == "dose":
        scores, _, _ = run([*fedrt, "evaluate", "--reference", str(DATA / "validation-pats"), "--predictions",
                            str(predictions), "--json"])
        scores = json.loads(scores)
        result.update(dose_score=scores["dose_score"], dvh_score=scores["dvh_score"])
    else:
        result.update(seg_scores(model))
    (args.out / f"{args.task}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
