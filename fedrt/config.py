"""Compose the Hydra configuration from ``configs/`` and command-line overrides, without changing directory."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config; a bad override is a ValueError that says what Hydra objected to."""
    try:
        with initialize_config_module(config_module="configs", version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as exc:
        raise ValueError(f"bad configuration override: {exc}") from exc


def to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config, resolve=True)


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """The Hydra overrides every configured command takes, and ``--show-config`` to print the result."""
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    parser.add_argument("--show-config", action="store_true", help="print the composed config and exit")


def composed(args: argparse.Namespace) -> DictConfig | None:
    """The config of a command's overrides; None when ``--show-config`` printed it and the command is done."""
    config = compose(args.overrides)
    if args.show_config:
        print(to_yaml(config))
        return None
    return config
