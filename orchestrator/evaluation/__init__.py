"""Scoring checkpoints: clinical metrics with intervals, thresholds, reports, and predict."""
