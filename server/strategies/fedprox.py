"""FedProx: FedAvg on the server; Flower sends ``proximal-mu`` and each site's loop adds the proximal term."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from server.strategies.screening import ScreenedStrategy


class FedProx(ScreenedStrategy, FlowerFedProx):
    """Flower's FedProx with fedrt's reply screening."""
