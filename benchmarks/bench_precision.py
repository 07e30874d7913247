"""Benchmark (issue 17): seconds per training step of the benchmark recipe's dose network in fp32 and in bfloat16
autocast on this CPU, and what ``train.precision=auto`` picks here.

One step as the training loop makes it (``models.loop.autocast``, channels-last 3D): a batch of 2 random 96^3
patches with the dose task's input channels, forward, L1, backward, AdamW. The first step is warm-up and not counted.

    python benchmarks/bench_precision.py --out DIR [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision (after one warm-up)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be 1 or more")
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from configs.compose import compose
    from models import loop
    from models.centralized import task_from_config

    config = compose(["task=dose", "preset=cpu60"])
    task = task_from_config(config)
    batch = (config.train.batch_size, task.in_channels, *task.model_config.patch)
    seconds: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        network = task.build_network().to(memory_format=torch.channels_last_3d)
        optimizer = torch.optim.AdamW(network.parameters())
        image = torch.randn(batch).to(memory_format=torch.channels_last_3d)
        target = torch.randn(batch[0], 1, *batch[2:])
        times: list[float] = []
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            with loop.autocast(precision):
                output = network(image)
            loss = (output.float() - target).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        seconds[precision] = times[1:]
        print(f"{precision}: {statistics.median(times[1:]):.2f} s per step (warm-up {times[0]:.2f} s)", flush=True)
    auto, native = loop.resolve_precision("auto"), loop.native_bf16()
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU capability {capability}, bfloat16 instructions: {native}; train.precision=auto trains in {auto}")
    report = {"machine": f"{platform.node()} {platform.machine()} {platform.processor()}, {os.cpu_count()} CPUs, "
                         f"torch {torch.__version__}, {torch.get_num_threads()} threads",
              "date": time.strftime("%Y-%m-%d"), "cpu_capability": capability, "native_bf16": native,
              "auto": auto, "batch": list(batch), "seconds_per_step": seconds}
    (args.out / "precision.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
