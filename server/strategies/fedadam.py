"""FedAdam: the weighted mean update applied by a server-side Adam whose moments are checkpointed."""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAdam as FlowerFedAdam

from protocols.errors import ConfigError
from server.strategies.screening import ScreenedStrategy

MOMENTS = ("m_t", "v_t")


class FedAdam(ScreenedStrategy, FlowerFedAdam):
    """Flower's FedAdam with fedrt's reply screening; its first and second moments resume exactly."""

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """The first and second moments (absent before the first aggregation)."""
        return {name: dict(getattr(self, name)) for name in MOMENTS if getattr(self, name)}

    def load_optimizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Continue from moments saved by ``optimizer_state`` (a round checkpoint)."""
        unknown = sorted(set(state) - set(MOMENTS))
        if unknown:
            raise ConfigError(f"unknown FedAdam state {unknown}; expected {list(MOMENTS)}")
        for name in MOMENTS:
            setattr(self, name, {k: np.asarray(v) for k, v in state[name].items()} if name in state else None)
