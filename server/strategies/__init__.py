"""Aggregation strategies, one per module, each extending Flower's with fedrt's reply screening."""

from __future__ import annotations

from typing import Any

from protocols.errors import ConfigError
from server.strategies.cyclic import CyclicWeightTransfer
from server.strategies.fedadam import FedAdam
from server.strategies.fedavg import FedAvg
from server.strategies.fedavgm import FedAvgM
from server.strategies.fedprox import FedProx
from server.strategies.screening import ScreenedStrategy
from wire.records import ARRAYS, CONFIG, NUM_EXAMPLES

STRATEGIES: dict[str, type[ScreenedStrategy]] = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedprox": FedProx,
                                                  "fedadam": FedAdam, "cyclic": CyclicWeightTransfer}


def build_strategy(settings: dict[str, Any], min_available_nodes: int, min_train_nodes: int,
                   min_evaluate_nodes: int, fraction_evaluate: float = 1.0) -> ScreenedStrategy:
    """The strategy named by ``settings["name"]`` (the ``strategy`` config group), its options from the rest."""
    options = dict(settings)
    name = options.pop("name", None)
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose strategy={'|'.join(STRATEGIES)}")
    return STRATEGIES[name](min_available_nodes=min_available_nodes, min_train_nodes=min_train_nodes,
                            min_evaluate_nodes=min_evaluate_nodes, fraction_evaluate=fraction_evaluate,
                            weighted_by_key=NUM_EXAMPLES, arrayrecord_key=ARRAYS, configrecord_key=CONFIG,
                            **options)


__all__ = ["STRATEGIES", "CyclicWeightTransfer", "FedAdam", "FedAvg", "FedAvgM", "FedProx", "ScreenedStrategy",
           "build_strategy"]
