"""The one place networks are built from the config: a MONAI 3D U-Net sized by ``ModelConfig``."""

from __future__ import annotations

from monai.networks.nets import UNet
from torch import nn

from models.config import ModelConfig


def build_unet(in_channels: int, out_channels: int, config: ModelConfig) -> nn.Module:
    """A residual 3D U-Net with instance norm (batch statistics are meaningless at batch size 1-2)."""
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.res_units,
        norm="instance",
        dropout=config.dropout,
    )
