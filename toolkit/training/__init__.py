"""Pieces of the trainer: recipe config, margin heads, LR schedule, checkpoints, batch-norm repair."""
