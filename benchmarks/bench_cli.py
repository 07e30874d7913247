"""Benchmark of the command line's start-up: wall time of ``fedrt --help`` and ``fedrt plan --help`` as whole
processes (interpreter start included), median and worst of N runs each.

    python benchmarks/bench_cli.py --runs 10
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["plan", "--help"], ["simulate", "--help"])


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Seconds per run of ``fedrt ARGV`` (the installed console script next to this interpreter)."""
    fedrt = shutil.which("fedrt", path=str(Path(sys.executable).parent)) or "fedrt"
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([fedrt, *argv], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}")
    print("| command | median (s) | worst (s) | runs |\n|---|---|---|---|")
    for argv in COMMANDS:
        times = wall_times(argv, args.runs)
        print(f"| `fedrt {' '.join(argv)}` | {statistics.median(times):.2f} | {max(times):.2f} | {args.runs} |")


if __name__ == "__main__":
    main()
