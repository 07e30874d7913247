"""Benchmark of federated training (issue 4) on the shared OpenKBP data, run as separate ``fedrt`` processes.

Scenario: the 40 training patients split 16/12/8/4 over 4 hospitals (``partition=skew`` with proportions
0.4/0.3/0.2/0.1); federated vs centralised vs each local-only model at equal budget (``fedrt baseline``: the
same loop, patients and epochs), all scored on the 10 validation patients. Also measured: per-round framework
overhead (round wall time of the training phase minus the slowest site's training time) and the peak memory
(summed RSS of the whole process tree: driver, Ray, virtual hospitals) with 4 and with 16 virtual hospitals.

    python benchmarks/bench_federated.py --out bench-federated                  # full size: hours on 2 cores
    python benchmarks/bench_federated.py --out bench-federated-smoke --smoke    # minutes: proves it works
    python benchmarks/bench_federated.py --out bench-federated --federated-only --task dose strategy=fedavgm
    python benchmarks/bench_federated.py --out bench-federated --federated-only --task dose strategy=cyclic \
        simulation.threads_per_site=2

Extra arguments are Hydra overrides for every run (e.g. ``rounds=20 federation.local_epochs=1``). Results go to
``OUT/results.json`` and ``OUT/summary.md`` (tables to copy into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "openkbp"
SKEW = ["partition=skew", "partition.proportions=[0.4,0.3,0.2,0.1]", "num_sites=4"]
# Full size: the cpu60 network; 10 rounds x 2 local epochs (a pass over each site's patients per epoch);
# the baselines get the same 20 epochs. Server-side scoring on the 10 validation patients every 5 rounds.
FULL = ["preset=cpu60", "rounds=10", "federation.local_epochs=2", "train.max_minutes=null",
        "train.steps_per_epoch=null", "data.max_cases=null", "data.max_val_cases=null",
        "federation.server_eval_every=5"]
SMOKE = ["preset=smoke", "rounds=2", "data.max_cases=8", "data.max_val_cases=2"]
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def tree_rss_kib(root: int) -> int:
    """Summed resident memory of ``root`` and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(pid)
            rss[pid] = int((stat.parent / "statm").read_text().split()[1]) * PAGE_KIB
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run(cmd: list[str], log: Path) -> tuple[str, float, float]:
    """Run one process with its output in ``log``; returns stdout, wall seconds and peak tree memory in MiB."""
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=log.parent)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                peak[0] = max(peak[0], tree_rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = proc.communicate()
        done.set()
        sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return out, time.perf_counter() - start, peak[0] / 1024


def overhead(uri: str, run_id: str, relay: bool) -> dict:
    """Per-round framework overhead of a federated run, from its MLflow metrics (rounds after the first,
    which also starts Ray and loads each site's data). ``shared_cpu`` also subtracts queueing: with more
    virtual hospitals than CPU slots the sites train in turns, so the training time the round must take is
    max(slowest site, all sites' training / slots). A ``relay`` (strategy=cyclic) must take all sites' training.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    phase, slowest, total = (history(k) for k in ("round/train_phase_s", "round/slowest_site_train_s",
                                                  "round/site_train_total_s"))
    slots = max(1, (os.cpu_count() or 1))  # simulation.cpus_per_site=1: one hospital per CPU at a time
    rounds = sorted(r for r in phase if r > 1) or sorted(phase)
    if relay:
        slowest = total
    seconds = [phase[r] - slowest[r] for r in rounds]
    plain = [(phase[r] - slowest[r]) / phase[r] for r in rounds]
    shared = [max(phase[r] - max(slowest[r], total[r] / slots), 0.0) / phase[r] for r in rounds]
    return {"rounds": rounds, "round_s": [phase[r] for r in rounds], "overhead_s": seconds,
            "overhead_s_median": statistics.median(seconds), "overhead_fraction": plain,
            "overhead_fraction_median": statistics.median(plain),
            "overhead_fraction_shared_cpu_median": statistics.median(shared)}


def scenario(task: str, out: Path, fedrt: list[str], common: list[str], baselines: bool = True) -> dict:
    """Federated run, baselines and comparison table of one task; peak memory of the 4-hospital run.
    Without ``baselines`` the comparison uses those an earlier run recorded in the same MLflow store.
    """
    args = [f"task={task}", *SKEW, *common]
    stdout, seconds, peak_mib = run([*fedrt, "simulate", *args, f"output={out / f'{task}-federated.pt'}"],
                                    out / f"{task}-simulate.log")
    run_id = next(line.split()[2] for line in stdout.splitlines() if line.startswith("MLflow run "))
    baseline_s = baseline_mib = float("nan")
    if baselines:
        _, baseline_s, baseline_mib = run([*fedrt, "baseline", *args], out / f"{task}-baseline.log")
    table_file = out / f"{task}-comparison.md"
    run([*fedrt, "compare", *args, "--out", str(table_file)], out / f"{task}-compare.log")
    uri = next(a.split("=", 1)[1] for a in common if a.startswith("tracking.uri="))
    return {"federated_run": run_id, "simulate_minutes": seconds / 60, "peak_mib_4_sites": peak_mib,
            "baseline_minutes": baseline_s / 60, "baseline_peak_mib": baseline_mib,
            "overhead": overhead(uri, run_id, "strategy=cyclic" in common),
            "comparison": table_file.read_text().strip()}


def memory_16(out: Path, fedrt: list[str], common: list[str], smoke: bool) -> dict:
    """Peak memory of one round with 16 virtual hospitals (iid over the training patients)."""
    args = [*common, "task=dose", "num_sites=16", "partition=iid", "rounds=1"]  # last: wins over ``common``
    if smoke:
        args.append("data.max_cases=16")
    _, seconds, peak_mib = run([*fedrt, "simulate", *args, f"output={out / 'dose-16-sites.pt'}"],
                               out / "dose-16-sites.log")
    return {"peak_mib_16_sites": peak_mib, "minutes": seconds / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", choices=["dose", "seg", "both"], default="both")
    parser.add_argument("--smoke", action="store_true", help="tiny network and few patients: minutes, not hours")
    parser.add_argument("--federated-only", action="store_true",
                        help="only the federated runs and the comparisons, against the baselines an earlier run "
                             "left in OUT (e.g. another strategy=...); no 16-hospital run")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fedrt = [sys.executable, "-m", "fedrt.cli"]
    common = [*(SMOKE if args.smoke else FULL), f"data.root={DATA}", f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
              *args.overrides]
    tasks = ["dose", "seg"] if args.task == "both" else [args.task]
    result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "overrides": common,
              "tasks": {task: scenario(task, out, fedrt, common, not args.federated_only) for task in tasks}}
    if not args.federated_only:
        result["memory_16_sites"] = memory_16(out, fedrt, common, args.smoke)
    name = "results-federated-only" if args.federated_only else "results"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"Federated benchmark ({'smoke size' if args.smoke else 'full size'}), {result['machine']}, "
             f"{result['date']}", ""]
    for task, r in result["tasks"].items():
        lines += [f"## {task}", "", r["comparison"], "",
                  f"Framework overhead per round (median over rounds 2..): "
                  f"{100 * r['overhead']['overhead_fraction_median']:.1f}% of the training phase "
                  f"({100 * r['overhead']['overhead_fraction_shared_cpu_median']:.1f}% after queueing on shared "
                  f"CPUs); peak memory with 4 virtual hospitals {r['peak_mib_4_sites']:.0f} MiB; simulate "
                  f"{r['simulate_minutes']:.1f} min, baselines {r['baseline_minutes']:.1f} min (nan: reused).", ""]
    if "memory_16_sites" in result:
        peak_16 = result["memory_16_sites"]["peak_mib_16_sites"]
        lines.append(f"Peak memory with 16 virtual hospitals: {peak_16:.0f} MiB.")
    (out / f"{name.replace('results', 'summary')}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
