"""Data: raw readers, ArrayRecord shards, embedded datasets, and the Grain input pipeline.

Deliberately empty: importing `goal_jax.data.records` must not pull TFDS, PIL or the readers.
"""
