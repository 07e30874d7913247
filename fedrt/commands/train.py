"""``fedrt train task=dose|seg data.root=PATH [overrides]``: centralised training; prints the checkpoint path last."""

from __future__ import annotations

import argparse

from fedrt.config import add_override_arguments, composed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a dose or segmentation model centrally",
        description="Centralised training. Hydra overrides, e.g. task=seg data.root=../shared/data/openkbp "
                    "preset=smoke train.epochs=5 output=model.pt. With no data.root, generated phantoms are used.")
    add_override_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models.centralized import run_training

    config = composed(args)
    if config is None:
        return 0
    if not config.tracking.train:
        outcome = run_training(config)
    else:
        from omegaconf import OmegaConf

        from server.tracking import Tracker, validation_metrics

        tags = {"fedrt.kind": "centralized", "fedrt.task": config.task.name, "fedrt.protocol": config.protocol}
        with Tracker.start(config.tracking.uri, config.tracking.experiment,
                           OmegaConf.to_container(config, resolve=True), tags,
                           run_name=f"train-{config.task.name}") as tracker:
            print(f"fedrt: MLflow run {tracker.run_id} ({config.tracking.uri})")
            outcome = run_training(config, on_validation=lambda step, scores: tracker.log_metrics(
                validation_metrics(scores), step))
            tracker.log_metrics({**validation_metrics(outcome.validation),
                                 "train/train_loss": outcome.result.loss}, outcome.result.steps)
            tracker.set_tags({"fedrt.precision": outcome.result.precision})
    history = ", ".join(f"{v:.4f}" for v in outcome.result.history)
    print(f"trained {outcome.result.steps} steps on {outcome.result.num_examples} cases in "
          f"{outcome.result.seconds:.0f} s ({outcome.result.precision}); loss per epoch: {history}")
    if outcome.validation:
        print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(outcome.validation.items())
                                         if not k.startswith("hd95_")))
    print(outcome.checkpoint)
    return 0
