"""Benchmark (issue 17): one training run of the benchmark recipe on the shared OpenKBP patients, scored on the 10
validation patients four ways, so that each inference-side change is measured alone on the same training:
the last step's weights or the mean of the last steps' (``train.average_from``), each without and with
left-right flip test-time augmentation (``model.tta_flip``).

    python benchmarks/bench_recipe.py --task seg --out DIR [overrides...]
    python benchmarks/bench_recipe.py --task seg --out DIR --minutes 0.5 preset=smoke   # a quick check

The validation patients are also scored every ``--validate-every`` minutes of training (not budget time), as
``fedrt train train.validate_every_min`` does. Results: ``OUT/<task>-recipe.json`` and the checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "openkbp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["dose", "seg", "sct"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget (default 60)")
    parser.add_argument("--average-from", type=float, default=0.8, help="fraction of the budget averaging starts at")
    parser.add_argument("--validate-every", type=float, default=10.0, help="minutes of training between scores")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after the recipe's)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from configs.compose import compose
    from models import loop
    from models.centralized import load_data, score_line, task_from_config, train_config
    from models.checkpoint import save_checkpoint
    from models.tasks import make_task

    config = compose([f"task={args.task}", f"data.root={DATA}", "preset=cpu60",
                      f"train.max_minutes={args.minutes}", f"train.average_from={args.average_from}",
                      f"train.validate_every_min={args.validate_every}", *args.overrides])
    task = task_from_config(config)
    split = load_data(config, task)
    network = task.build_network()
    prepared = [task.prepare(case) for case in split.train]
    progress: list[dict] = []

    def validated(step: int, minutes: float, scores: dict[str, float]) -> None:
        progress.append({"step": step, "minutes": minutes, **scores})
        print(f"{minutes:.1f} min, step {step}: {score_line(scores, task.primary_metric)}", flush=True)

    result = loop.train(network, task, prepared, train_config(config), progress=False, validation=split.val,
                        on_validation=validated)
    train_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    averaged = {k: v.clone() for k, v in network.state_dict().items()}
    weights = {"last step": result.last_weights or averaged, "averaged": averaged}
    variants = {}
    for name, state in weights.items():
        network.load_state_dict(state)
        save_checkpoint(args.out / f"{args.task}-{name.replace(' ', '-')}.pt", task, network)
        for tta in (False, True):
            variant = make_task(task.name, task.protocol, dataclasses.replace(task.model_config, tta_flip=tta))
            start = time.perf_counter()
            scores = loop.evaluate(network, variant, split.val)
            label = f"{name}{' + flip TTA' if tta else ''}"
            variants[label] = {**scores, "predict_seconds_per_patient": (time.perf_counter() - start) / len(split.val)}
            print(f"{label}: {score_line(scores, task.primary_metric)}", flush=True)
    report = {"task": args.task, "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs "
                                            f"({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}",
              "precision": result.precision,
              "date": time.strftime("%Y-%m-%d"), "overrides": args.overrides, "budget_minutes": args.minutes,
              "average_from": args.average_from, "steps": result.steps, "averaged_steps": result.averaged_steps,
              "train_minutes": result.seconds / 60, "validation_minutes": result.validation_seconds / 60,
              "train_peak_mib": train_peak_mib, "loss_history": result.history, "progress": progress,
              "variants": variants}
    (args.out / f"{args.task}-recipe.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
