"""The Tune side of a sweep: one trial per configuration, the leaderboard, testing the top trials."""
