"""GPU workers: one process per GPU, pinned to one model type, weights kept warm."""
