"""Hydra configuration for every fedrt command (composed with ``configs.compose.compose``)."""
