"""Training objectives: pure functions of model outputs and the batch (fp32, jittable).

Each objective returns `(total, terms)` and takes `axis_name` so the same code runs densely or
inside `contrastive.data_parallel` (a `jax.shard_map` over the batch axis).
"""
from goal_jax.losses.contrastive import (contrastive_loss, data_parallel, infonce,
                                         sharded_infonce)
from goal_jax.losses.goal import (GLOBAL_FINETUNE_WEIGHTS, GOAL_WEIGHTS, LOCAL_FINETUNE_WEIGHTS,
                                  NO_TSL_WEIGHTS, Heads, goal_objective, masked_mean)
from goal_jax.losses.longclip import LONGCLIP_WEIGHTS, longclip_objective
from goal_jax.losses.mulclip import (MULCLIP_WEIGHTS, Calibrators, MulCLIPOptions,
                                     TokenCalibration, mulclip_objective)

__all__ = [
    "Calibrators", "GLOBAL_FINETUNE_WEIGHTS", "GOAL_WEIGHTS", "Heads", "LOCAL_FINETUNE_WEIGHTS",
    "LONGCLIP_WEIGHTS", "MULCLIP_WEIGHTS", "MulCLIPOptions", "NO_TSL_WEIGHTS", "TokenCalibration",
    "contrastive_loss", "data_parallel", "goal_objective", "infonce", "longclip_objective",
    "masked_mean", "mulclip_objective", "sharded_infonce",
]
