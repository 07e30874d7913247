"""Compose the Hydra configuration from this package and overrides, without changing directory: the one way every
command, the deployed ServerApp and the tests build a run's configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from protocols.errors import ConfigError


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config; a bad override is a ConfigError that says what Hydra objected to."""
    try:
        with initialize_config_module(config_module="configs", version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(f"bad configuration override: {exc}") from exc


def to_yaml(config: DictConfig) -> str:
    """The config as YAML with interpolations resolved (``--show-config``)."""
    return OmegaConf.to_yaml(config, resolve=True)
