"""Measurements of this project's speed, each a command that prints ratios against a reference
measured in the same run:

  python -m goal_jax.bench          the training step of each method: time, MFU, PyTorch baselines;
                                    with --trainer, the trainer fed by the Grain pipeline beside it
  python -m goal_jax.bench.input    the input pipeline: images/s against Grain worker processes,
                                    the detail copy's costs, CPU per record by stage
  python -m goal_jax.bench.lism     LISM's mining: images/s of each stage
"""
