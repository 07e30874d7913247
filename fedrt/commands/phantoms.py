"""``fedrt phantoms DST``: write generated head-and-neck phantoms (synthetic dose) in OpenKBP's CSV layout."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantoms",
        help="write generated head-and-neck phantoms (synthetic dose) as an OpenKBP dataset",
        description="Write pt_1..pt_N phantom patients in OpenKBP's CSV layout on the protocol grid. "
        "Their dose is synthetic (a fixed function of the contours), not a dose calculation.",
    )
    parser.add_argument("dst", help="destination folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--n", type=int, default=8, help="number of patients (default 8)")
    parser.add_argument(
        "--seed", type=int, default=0, help="dataset seed; the same seed gives the same files"
    )
    parser.add_argument(
        "--protocol", default="hn-openkbp", help="protocol name or YAML path (default hn-openkbp)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    parser.set_defaults(run=run_phantoms)


def run_phantoms(args: argparse.Namespace) -> int:
    from protocols.phantom import write_phantom_dataset
    from protocols.protocol import load_protocol

    protocol = load_protocol(args.protocol)
    written = write_phantom_dataset(args.dst, protocol, args.n, args.seed, overwrite=args.overwrite)
    print(f"wrote {len(written)} phantom patients ({protocol.name}, seed {args.seed}) to {args.dst}")
    return 0
