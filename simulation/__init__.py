"""Many virtual hospitals on one machine: partitioners, the Flower simulation, baselines and comparisons."""
