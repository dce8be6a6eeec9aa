"""Training objectives: pure functions of model outputs and the batch (fp32, jittable).

Each objective returns `(total, terms)` and takes `axis_name` so the same code runs densely or
inside `contrastive.data_parallel` (a `jax.shard_map` over the batch axis). Import the modules:
`contrastive`, `goal`, `mulclip`, `longclip`.
"""
