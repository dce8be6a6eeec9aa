"""Trainer plumbing: optimizer groups, sharding rules, checkpoints, metrics, preemption, progress.

Model-agnostic: every piece works on plain param/state pytrees named 'a/b/c', so the method
trainers (`goal_jax.train`) compose them without this package knowing the model or the loss.
"""
