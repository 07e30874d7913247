"""Hydra configuration for every fedrt command (composed with ``fedrt.config.compose``)."""
