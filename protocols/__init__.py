"""Treatment protocols: what a protocol is, its cases and datasets, validation and metrics."""
