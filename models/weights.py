"""Model weights as a list of numpy arrays (Flower-free): the whole state dict, buffers included."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


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
