"""FedAvgM: the weighted mean update applied with a server learning rate and momentum (Hsu et al., 2019).

At an equal number of epochs the averaged model moves by about the mean of the sites' steps, not their sum;
server momentum carries part of each round's move into the next, and its velocity is checkpointed.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAvgM as FlowerFedAvgM

from protocols.errors import ConfigError
from server.strategies.screening import ScreenedStrategy

VELOCITY = "momentum_vector"


class FedAvgM(ScreenedStrategy, FlowerFedAvgM):
    """Flower's FedAvgM with fedrt's reply screening; its momentum resumes exactly."""

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """The server momentum, one array per weight in the model's order (absent before it exists)."""
        if self.momentum_vector is None:
            return {}
        return {VELOCITY: {str(i): v for i, v in enumerate(self.momentum_vector)}}

    def load_optimizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Continue from the momentum saved by ``optimizer_state`` (a round checkpoint)."""
        unknown = sorted(set(state) - {VELOCITY})
        if unknown:
            raise ConfigError(f"unknown FedAvgM state {unknown}; expected [{VELOCITY!r}]")
        saved = state.get(VELOCITY)
        self.momentum_vector = None if saved is None else [np.asarray(saved[str(i)]) for i in range(len(saved))]
