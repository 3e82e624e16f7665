"""Image data: datasets, training batches, class labels, and the EDM-format dataset builder."""
