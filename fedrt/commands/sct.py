"""``fedrt sct MR_INPUT --model MODEL --out DIR``: a synthetic CT of an MR as a DICOM CT series in the MR's frame."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sct", help="make a synthetic CT from an MR and write it as a DICOM CT series",
        description="Predict a CT in HU from one patient's MR with an sct model and write it as a DICOM CT series "
        "(ImageType DERIVED, the model named) in the MR's study and Frame of Reference.")
    parser.add_argument("input", help="a DICOM folder with one MR series, or an OpenKBP patient folder with mr.csv")
    parser.add_argument("--model", required=True, help="sct checkpoint, or models:/NAME@ALIAS")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models.checkpoint import load_checkpoint
    from models.registry import model_label, resolve_model
    from runtime.sct import synthesize_ct

    result = synthesize_ct(args.input, load_checkpoint(resolve_model(args.model)), args.out, model_label(args.model))
    print(f"synthetic CT: {len(result.files)} slices of {result.grid.shape[0]} x {result.grid.shape[1]} at "
          f"{' x '.join(f'{s:g}' for s in result.grid.spacing_mm)} mm, HU {result.sct_hu.min():.0f}.."
          f"{result.sct_hu.max():.0f}")
    print("timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items())
          + f", total {sum(result.timings_s.values()):.1f} s")
    print(result.files[0].parent)
    return 0
