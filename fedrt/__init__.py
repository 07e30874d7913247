"""fedrt: federated learning for radiation therapy."""

from importlib.metadata import version

__version__ = version("fedrt")
