"""The two networks (dose prediction, OAR segmentation) and the one train/evaluate loop that drives them."""
