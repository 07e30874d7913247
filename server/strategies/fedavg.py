"""FedAvg: the mean of the sites' models weighted by ``num-examples``, over validated replies only."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from server.strategies.screening import ScreenedStrategy


class FedAvg(ScreenedStrategy, FlowerFedAvg):
    """Flower's FedAvg with fedrt's reply screening."""
