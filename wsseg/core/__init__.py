"""Foundations that know no task: io, checkpoints, the training loop and stage skeleton,
evaluation, metrics, figures and reports. Builds on `datasets` only."""
