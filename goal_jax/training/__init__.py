"""The trainer (`loop.run`, behind `python -m goal_jax.train`) and its plumbing: optimizer groups,
sharding rules, checkpoints, metrics, preemption, progress, the workdir's lock and resume rules.

The plumbing works on plain param/state pytrees named 'a/b/c' and knows neither the model nor
the loss; `loop` is where they meet the model (`models.clip`) and the method (`methods.get`).
"""
