"""``fedrt data simulate-mr SRC DST``: a copy of a dataset with a simulated MR beside every CT (paired MR/CT)."""

from __future__ import annotations

import argparse


def add_simulate_mr(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate-mr`` to the ``fedrt data`` actions."""
    parser = data_subparsers.add_parser(
        "simulate-mr",
        help="copy an OpenKBP-layout dataset and add a simulated T1-weighted MR (mr.csv) from each CT",
        description="Reproduce every patient folder of SRC under DST (hard links where possible) and add mr.csv, "
        "a T1-weighted MR simulated from the CT by the scanner of --seed (one virtual hospital). The images are "
        "simulated, not acquired: for tests and benchmarks of the MRI-only flow.",
    )
    parser.add_argument("src", help="an OpenKBP-layout dataset (patients as subfolders) or one patient folder")
    parser.add_argument("dst", help="a new or empty folder for the dataset with MR")
    parser.add_argument("--seed", type=int, default=0, help="scanner seed: each seed is another site's scanner "
                        "(sequence, contrast, bias field, noise, scale); the same seed gives the same files")
    parser.add_argument("--protocol", default="hn-openkbp", help="protocol name or YAML path (default hn-openkbp)")
    parser.set_defaults(run=run_simulate_mr)


def run_simulate_mr(args: argparse.Namespace) -> int:
    from protocols.protocol import load_protocol
    from protocols.simulated_mr import SIMULATED_MR_LABEL, Scanner
    from protocols.simulated_mr_dataset import write_simulated_mr_dataset

    scanner = Scanner.for_site(args.seed)
    written = write_simulated_mr_dataset(
        args.src, args.dst, load_protocol(args.protocol), scanner,
        on_patient=lambda p: print(f"{p.patient_id:<12} {SIMULATED_MR_LABEL}: {p.mr_file}", flush=True))
    patients = f"{len(written)} patient{'' if len(written) == 1 else 's'}"
    print(f"{patients} with {SIMULATED_MR_LABEL} (scanner seed {args.seed}: {scanner.describe()}) in {args.dst}")
    return 0
