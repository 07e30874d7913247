"""fedrt: federated learning for radiation therapy."""

__version__ = "0.1.0"
