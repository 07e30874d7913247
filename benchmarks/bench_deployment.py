"""Benchmark (issues 5, 14): per-round framework overhead of a real deployment on 127.0.0.1 (server behind its
proxy, TLS and node authentication, 2 SuperNodes, ``fedrt run``), with the nodes' warm worker and without it
(``--no-worker``: every message's ClientApp imports torch and loads the patients), against Flower's simulation
engine for the same run (same network, patients per site, rounds and seeds); and the memory of an idle and of a
training node.

Overhead per round = the round's wall time (training and evaluation) minus the slowest site's training, the
slowest site's evaluation and the server's own evaluation (MLflow ``round/overhead_s``); the training phase alone
is ``round/train_overhead_s``. Medians over rounds 2.. (round 1 also starts the apps and loads each site's data).
Node memory = summed RSS of the node's process tree (fedrt, the worker, the SuperNode and the ClientApp process it
starts), sampled every 0.2 s.

    python benchmarks/bench_deployment.py --out bench-deployment [--size smoke] [overrides...]

It reuses the integration tests' loopback deployment (``tests/deploy_fixtures.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "openkbp"
sys.path.insert(0, str(REPO / "tests"))

import statistics  # noqa: E402

from bench_federated import tree_rss_kib  # noqa: E402
from deploy_fixtures import Deployment, fedrt_run, link_site  # noqa: E402

SITES = {"site-a": (["pt_1", "pt_2", "pt_3", "pt_4"], ["pt_201"]), "site-b": (["pt_5", "pt_6", "pt_7", "pt_9"],
                                                                            ["pt_202"])}
SIZES = {  # cpu60: the benchmark network (native grid, 96^3 patches, 16-32-64-128) for a few steps per round
    "cpu60": ["preset=cpu60", "num_sites=2", "rounds=4", "federation.local_epochs=1", "train.steps_per_epoch=8",
              "train.max_minutes=null", "train.threads=1", "data.max_val_cases=1", "federation.server_eval_every=4",
              "train.precision=fp32"],  # as measured: the overhead is a ratio to the sites' work, bf16 would halve it
    "smoke": ["preset=smoke", "data.max_cases=null", "num_sites=2", "rounds=4", "federation.local_epochs=1",
              "train.steps_per_epoch=2", "train.threads=1", "data.max_val_cases=1", "federation.server_eval_every=4"],
}
MEASURES = ("deployment", "deployment_no_worker", "simulation")
ROUND_KEYS = ("seconds", "train_phase_s", "slowest_site_train_s", "slowest_site_eval_s", "server_eval_s",
              "overhead_s", "overhead_fraction", "train_overhead_s", "train_overhead_fraction")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB."""
    return tree_rss_kib(pid) / 1024


def latest_run(uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run, *_) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id],
                                   order_by=["attributes.start_time DESC"])
    return run.info.run_id


def round_figures(uri: str, run_id: str) -> dict:
    """Per-round times of a run from MLflow (``round/*``), and their medians over rounds 2.."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    history = {key: {m.step: m.value for m in client.get_metric_history(run_id, f"round/{key}")} for key in ROUND_KEYS}
    rounds = sorted(r for r in history["seconds"] if r > 1) or sorted(history["seconds"])
    return {"rounds": rounds, **{key: [history[key][r] for r in rounds] for key in ROUND_KEYS},
            **{f"{key}_median": statistics.median(history[key][r] for r in rounds) for key in ROUND_KEYS}}


def deployed(out: Path, run: list[str], worker: bool) -> dict:
    """The run on a loopback deployment, with node memory sampled while idle and while training."""
    out.mkdir(parents=True, exist_ok=True)
    sites = {name: link_site(out / name, DATA, train, val) for name, (train, val) in SITES.items()}
    server_data = link_site(out / "server-data", DATA, ["pt_10"], ["pt_203"])
    uri = f"sqlite:///{out / 'deployment.db'}"
    with Deployment(out, sites, worker=worker) as deployment:
        nodes = {name: proc.pid for name, proc in deployment.nodes.items()}
        time.sleep(3)
        idle = {name: tree_rss_mib(pid) for name, pid in nodes.items()}
        peak = dict.fromkeys(nodes, 0.0)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                for name, pid in nodes.items():
                    peak[name] = max(peak[name], tree_rss_mib(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        code = fedrt_run([*run, f"data.root={server_data}", f"tracking.uri={uri}", f"output={out / 'deployed.pt'}",
                          *deployment.flags])
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if code:
        raise SystemExit(f"fedrt run failed ({code}); see {out}")
    return {"wall_s": wall, "node_idle_mib": idle, "node_training_peak_mib": peak,
            **round_figures(uri, latest_run(uri))}


def simulated(out: Path, run: list[str]) -> dict:
    """The same run through Flower's simulation engine (Ray), the same patients per virtual hospital (the
    server validates on the sites' two validation patients, which only the rounds' evaluation phase sees).
    """
    from configs.compose import compose
    from simulation.run import simulate

    uri = f"sqlite:///{out / 'simulation.db'}"
    train = "[" + ",".join("[" + ",".join(t) + "]" for t, _ in SITES.values()) + "]"
    val = "[" + ",".join("[" + ",".join(v) + "]" for _, v in SITES.values()) + "]"
    start = time.perf_counter()
    outcome = simulate(compose([*run, f"data.root={DATA}", "partition=sites", f"partition.train={train}",
                                f"partition.val={val}", "data.max_val_cases=2", f"tracking.uri={uri}",
                                f"output={out / 'simulated.pt'}", f"simulation.sites_dir={out / 'sim-sites'}"]))
    return {"wall_s": time.perf_counter() - start, **round_figures(uri, outcome.federation.run_id)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu60")
    parser.add_argument("--only", nargs="+", choices=MEASURES, default=list(MEASURES),
                        help="run only these of the three measures (default: all)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    run = [*SIZES[args.size], *args.overrides]
    result = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%d"), "run": run}
    measures = {"deployment": lambda: deployed(out / "deployment", run, worker=True),
                "deployment_no_worker": lambda: deployed(out / "deployment-no-worker", run, worker=False),
                "simulation": lambda: simulated(out / "simulation", run)}
    for name in args.only:
        result[name] = measures[name]()
        (out / "deployment.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
