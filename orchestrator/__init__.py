"""Driver side: experiment specs, data preparation, the Ray Data pipeline, the Tune sweep."""
