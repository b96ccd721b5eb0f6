"""Datasets and their per-rank shards: the embedded digits, MNIST-format IDX files, synthetic
clusters, character text and addition problems, and the checksum-verified download."""
