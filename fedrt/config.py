"""The Hydra overrides every configured command takes, and ``--show-config`` to print what they compose to."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """Positional ``key=value`` overrides and ``--show-config``."""
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    parser.add_argument("--show-config", action="store_true", help="print the composed config and exit")


def composed(args: argparse.Namespace) -> DictConfig | None:
    """The config of a command's overrides; None when ``--show-config`` printed it and the command is done."""
    from configs.compose import compose, to_yaml

    config = compose(args.overrides)
    if args.show_config:
        print(to_yaml(config))
        return None
    return config
