"""The driver: specs, data preparation, the Tune sweep, the leaderboard, evaluation and reports.

It imports `trainables/` (what runs in Ray workers); `trainables/` never imports it."""
