r"""Global fine-tuning: GOAL's baseline (its Table 1, row 1), InfoNCE(image, long caption) only.

  python -m goal_jax.train --config=configs/global_ft.py:demo --workdir=/tmp/global_demo

Same recipe as configs/goal.py (AdamW 5e-6 cosine, wd 0.05, batch 16, 10 epochs, 248 tokens),
but fp32 weights: the official baseline casts the whole model to bf16, where most lr-5e-6 updates
round away (its released `global_loss_finetuning.py`), which may understate the baseline.
Cost: one vision and one text forward per pair, about half a GOAL step.
"""
from goal_jax.configs import common
from goal_jax.configs import goal


def get_config(arg=None):
  args = common.parse(arg)
  config = common.base_config("global", args)
  config.optim.update(goal.RECIPE_OPTIMIZER)  # the baseline trains as GOAL does
  return common.with_demo(config, args)
