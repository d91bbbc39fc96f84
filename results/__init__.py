"""Experiment directory -> DataFrames (no Ray needed). ``python -m results`` for the CLI."""
from results.frames import epoch_frame, leaderboard, read_trials, trial_frame

__all__ = ["epoch_frame", "leaderboard", "read_trials", "trial_frame"]
