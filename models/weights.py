"""Model weights as a list of numpy arrays (Flower-free): the whole state dict, buffers included; and the mean of
a network's weights over its last training steps.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def set_weights(network: nn.Module, weights: list[np.ndarray]) -> None:
    """Load the state dict's arrays in its order (as ``ArrayRecord(network.state_dict())`` carries them); a wrong
    count, shape or dtype is an error, never a silent cast.
    """
    state = network.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} weight arrays, got {len(weights)}")
    loaded = OrderedDict()
    for (key, current), array in zip(state.items(), weights, strict=True):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(current.shape):
            raise ValueError(f"weight {key}: expected shape {tuple(current.shape)}, got {tuple(array.shape)}")
        tensor = torch.from_numpy(np.array(array, copy=True))
        if tensor.dtype != current.dtype:
            raise ValueError(f"weight {key}: expected dtype {current.dtype}, got {tensor.dtype}")
        loaded[key] = tensor
    network.load_state_dict(loaded, strict=True)


class WeightAverage:
    """The equal-weight mean of a network's parameters over the steps it is given (torch's ``AveragedModel``);
    ``apply`` puts it into the network, whose buffers (normalisation statistics) stay its own last ones.
    """

    def __init__(self) -> None:
        self.averaged: AveragedModel | None = None

    @property
    def count(self) -> int:
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    def update(self, network: nn.Module) -> None:
        """Add the network's current parameters to the mean."""
        if self.averaged is None:
            self.averaged = AveragedModel(network, use_buffers=False)
        self.averaged.update_parameters(network)

    @torch.no_grad()
    def apply(self, network: nn.Module) -> None:
        """Replace the network's parameters by the mean (nothing to do before the first ``update``)."""
        if self.averaged is not None:
            for mine, mean in zip(network.parameters(), self.averaged.module.parameters(), strict=True):
                mine.copy_(mean)
