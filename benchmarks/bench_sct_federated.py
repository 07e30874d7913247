"""Benchmark (issue 16): a synthetic-CT model trained across 4 hospitals whose MR scanners differ, against the
centralised model and each hospital's local-only model, on the shared patients with simulated MR.

The 40 training patients go to 4 hospitals, 10 each in folder order, each patient's MR simulated by its hospital's
scanner (``Scanner.for_site(1..4)``); the 10 validation patients are scanned by those 4 scanners in turn, and once
more by a fifth scanner no hospital has (``Scanner.for_site(5)``). Federated (``fedrt simulate``), centralised and
local-only (``fedrt baseline``: the same loop, patients and budget) models are scored on both validation sets
(SynthRAD's MAE, PSNR, SSIM inside the body). Every figure is on simulated MR.

    python benchmarks/bench_sct_federated.py --out DIR          # full size (cpu60 network): an hour on 2 cores (bf16)
    python benchmarks/bench_sct_federated.py --out DIR --smoke  # minutes: proves it works

Extra arguments are Hydra overrides for every run. Results: ``OUT/sct_federated.json`` and ``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "openkbp"
SITES = 4
UNSEEN_SCANNER = SITES + 1
# Full size: the cpu60 network, 40 rounds x 4 local epochs of one pass over a hospital's patients; the baselines
# the same 160 epochs (as bench_federated), so the federation, the centralised model and the 4 local-only models
# together each make the same number of training steps (160 x 20 with 40 patients, batch 2): about an hour on 2 cores
# with bfloat16 instructions (train.precision=auto); about three times as long in fp32 (docs/BENCHMARKS.md).
FULL = ["preset=cpu60", "rounds=40", "federation.local_epochs=4", "train.max_minutes=null",
        "train.steps_per_epoch=null", "data.max_cases=null", "data.max_val_cases=null",
        "federation.server_eval_every=10"]
SMOKE = ["preset=smoke", "rounds=1", "federation.local_epochs=1", "train.steps_per_epoch=2", "data.max_cases=null",
         "data.max_val_cases=null"]


def write_datasets(out: Path, patients_per_site: int | None) -> tuple[Path, Path, list[list[str]]]:
    """The pooled dataset (each patient scanned at its hospital) and the validation patients on the unseen scanner;
    also each hospital's training patients.
    """
    from protocols.dataset import find_patient_dirs
    from protocols.protocol import load_protocol
    from protocols.simulated_mr import Scanner
    from protocols.simulated_mr_dataset import write_simulated_mr_dataset

    protocol = load_protocol("hn-openkbp")
    train = [p.name for p in find_patient_dirs(DATA / "train-pats")]
    val = [p.name for p in find_patient_dirs(DATA / "validation-pats")]
    per_site = patients_per_site or len(train) // SITES
    sites = [train[i * per_site:(i + 1) * per_site] for i in range(SITES)]
    scanner_of = {p: i + 1 for i, site in enumerate(sites) for p in site}
    scanner_of |= {p: i % SITES + 1 for i, p in enumerate(val)}
    pooled, unseen = out / "pooled", out / "unseen-scanner"
    if not pooled.exists():
        write_simulated_mr_dataset(DATA, pooled, protocol, lambda p: Scanner.for_site(scanner_of.get(p, 1)))
    if not unseen.exists():
        write_simulated_mr_dataset(DATA / "validation-pats", unseen / "validation-pats", protocol,
                                   Scanner.for_site(UNSEEN_SCANNER))
    return pooled, unseen, sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny network, 2 patients per hospital: minutes")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    pooled, unseen, sites = write_datasets(out, 2 if args.smoke else None)

    from configs.compose import compose
    from models import loop
    from models.centralized import data_config, task_from_config
    from models.checkpoint import load_checkpoint
    from protocols.simulated_mr import SIMULATED_MR_LABEL
    from protocols.splits import load_cases, select_patients
    from simulation.baselines import run_baselines
    from simulation.compare import compare
    from simulation.run import simulate

    lists = "[" + ",".join("[" + ",".join(site) + "]" for site in sites) + "]"
    config = compose([*(SMOKE if args.smoke else FULL), "task=sct", f"data.root={pooled}", "partition=sites",
                      f"partition.train={lists}", f"num_sites={SITES}", f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
                      f"output={out / 'sct-federated.pt'}", f"simulation.sites_dir={out / 'sites'}", *args.overrides])
    start = time.perf_counter()
    federated = simulate(config)
    simulate_min = (time.perf_counter() - start) / 60
    start = time.perf_counter()
    baselines = run_baselines(config, progress=False)
    baseline_min = (time.perf_counter() - start) / 60
    table, _ = compare(config)

    task = task_from_config(config)
    unseen_cases = load_cases(select_patients(data_config(compose([f"data.root={unseen}", "data.max_val_cases=null"])),
                                              task.protocol, 0).val, task.protocol, "warn")
    models = {"federated": load_checkpoint(federated.federation.checkpoint).network,
              **{f"{b.kind} {b.site}": b.network for b in baselines}}
    result = {"label": SIMULATED_MR_LABEL, "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "overrides": args.overrides,
              "simulate_minutes": simulate_min, "baseline_minutes": baseline_min,
              "scanners_seen": {"federated": federated.federation.validation,
                                **{f"{b.kind} {b.site}": b.validation for b in baselines}},
              "scanner_unseen": {name: loop.evaluate(network, task, unseen_cases) for name, network in models.items()}}
    (out / "sct_federated.json").write_text(json.dumps(result, indent=2))
    rows = [f"| {name} | {seen['mae_hu']:.1f} | {seen['psnr_db']:.2f} | {seen['ssim']:.3f} | "
            f"{result['scanner_unseen'][name]['mae_hu']:.1f} |" for name, seen in result["scanners_seen"].items()]
    lines = [f"Synthetic CT across 4 hospitals' scanners ({SIMULATED_MR_LABEL}; "
             f"{'smoke size' if args.smoke else 'full size'}), {result['machine']}, {result['date']}", "", table, "",
             "| model | MAE HU (hospitals' scanners) | PSNR dB | SSIM | MAE HU (a fifth scanner) |",
             "|---|---|---|---|---|", *rows, "", f"simulate {simulate_min:.1f} min, baselines {baseline_min:.1f} min"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
