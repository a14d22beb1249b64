"""Worker side: backbones and weight sources, optimizers, metrics, the per-worker train loop."""
