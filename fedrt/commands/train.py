"""``fedrt train task=dose|seg data.root=PATH [overrides]``: centralised training; prints the checkpoint path last."""

from __future__ import annotations

import argparse

from fedrt.config import compose


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a dose or segmentation model centrally",
        description="Centralised training. Hydra overrides, e.g. task=seg data.root=../shared/data/openkbp "
                    "preset=smoke train.epochs=5 output=model.pt. With no data.root, generated phantoms are used.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    parser.add_argument("--show-config", action="store_true", help="print the composed config and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fedrt.config import to_yaml
    from models.centralized import run_training

    config = compose(args.overrides)
    if args.show_config:
        print(to_yaml(config))
        return 0
    outcome = run_training(config)
    history = ", ".join(f"{v:.4f}" for v in outcome.result.history)
    print(f"trained {outcome.result.steps} steps on {outcome.result.num_examples} cases in "
          f"{outcome.result.seconds:.0f} s; loss per epoch: {history}")
    if outcome.validation:
        print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(outcome.validation.items())
                                         if not k.startswith("hd95_")))
    print(outcome.checkpoint)
    return 0
