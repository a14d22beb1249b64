"""What runs in Ray workers and what a checkpoint needs: the model and its weights, the fine-tuning
policy, precision, the train loop, inference, the checkpoint format, the Ray Data transforms and
the metrics. Importable without anything from `orchestrator/` (`tests/test_layout.py` checks)."""
