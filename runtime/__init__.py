"""The clinical runtime: segmentation of a new CT and treatment planning."""
