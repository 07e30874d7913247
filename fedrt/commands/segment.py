"""``fedrt segment INPUT --model MODEL --out DIR``: OARs of a new CT as an RT Structure Set plus a PNG overview."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="segment the OARs of a CT and write an RT Structure Set")
    parser.add_argument("input", help="a DICOM folder with one CT series, or an OpenKBP patient folder")
    parser.add_argument("--model", required=True, help="checkpoint, or models:/NAME@ALIAS")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models.checkpoint import load_checkpoint
    from models.registry import model_label, resolve_model
    from runtime.segmentation import segment

    path = resolve_model(args.model)
    result = segment(args.input, load_checkpoint(path), args.out, model_label(args.model))
    found = [name for name, mask in result.masks.items() if mask.any()]
    print(f"segmented {len(found)} of {len(result.masks)} OARs: {', '.join(found) or 'none'}")
    if result.not_found:
        print(f"not found (no ROI written): {', '.join(result.not_found)}")
    print("timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items())
          + f", total {sum(result.timings_s.values()):.1f} s")
    print(f"overview: {result.overview}")
    print(result.rtstruct)
    return 0
