r"""FineLIP (Asokan et al., CVPR 2025): ATRM token refinement, CLIM late interaction, ranking loss.

  python -m goal_jax.train --config=configs/finelip.py:demo --workdir=/tmp/finelip_demo
  python -m goal_jax.train --config=configs/finelip.py:init=/ckpt/clip_b16,dataset=sharegpt4v \
      --workdir=/runs/finelip_b16

Recipe (FineLIP's released training code, https://github.com/tiiuae/FineLIP): Long-CLIP's
positions (77 -> 248, the first 20 frozen); long captions only; each side's projected tokens
refined by an ATRM to 39 tokens (int(196 · 0.4 · 0.5)), CLS and EOT kept; loss = the
bidirectional hinge ranking loss (margin 0.2, summed over the batch, all negatives) on CLIM
scores, and no InfoNCE (its InfoNCE runs only in the baseline mode); AdamW, weight decay 0.01,
lr 1e-6 for CLIP and 2e-4 for the ATRMs, 200 warmup steps then cosine, batch 128 with 4
accumulated steps (512 per update), 6 epochs of ShareGPT4V minus its first 1,000. Logit scale
re-initialised to ln(100) (used only by the optional InfoNCE). Retrieval with the method's
scores ranks by 0.8·global cosine + 0.2·CLIM.

Not reproduced: the released loop ramps the ranking loss from 0 to 1 over the first epoch
(`--embedding_warmup_epochs 0`); Adam's updates hardly depend on a slowly changing loss scale,
and the warmup steps already ease the start. Its scheduler also advances once per micro-batch
while its length counts updates, so its cosine ends a quarter of the way in and climbs back;
we run the cosine over the whole run.

Variants: hardest negative only (VSE++'s MH) --config.loss.max_violation=True;
with the global InfoNCE added  --config.loss.weights.global_long=1.
"""
import math

import ml_collections

from goal_jax.configs import common


def get_config(arg=None):
  args = common.parse(arg, dataset="sharegpt4v", batch=128, epochs=6.0)
  config = common.base_config("finelip", args)
  config.model.positions = "kps_frozen_prefix"
  config.reset_logit_scale = math.log(100.0)
  config.optim.update(lr=1e-6, schedule="cosine", warmup_steps=200, lr_floor=0.0, b1=0.9,
                      b2=0.999, eps=1e-8, weight_decay=0.01, grad_accum_steps=4)
  config.optim.param_groups = (("aggregation/.*", 200.0),)  # 2e-4 against CLIP's 1e-6
  # The released loop trains the ranking term alone; its InfoNCE is the baseline mode's.
  config.loss.weights = ml_collections.ConfigDict({"global_long": 0.0, "clim": 1.0})
  config.loss.label_smoothing = 0.1  # of the optional InfoNCE, as its baseline mode
  config.loss.aggregation_tokens = 39
  # Its released defaults (`goal_jax/losses/finelip.py:FineLIPOptions` says where each is from).
  config.loss.update(margin=0.2, max_violation=False, negative_slope=0.1, global_weight=0.8)
  if args.demo:
    # As MulCLIP's demo: 16 aggregated tokens, the modules at a modest 3x the demo's lr.
    config.loss.aggregation_tokens = 16
    config.optim.param_groups = (("aggregation/.*", 3.0),)
    config.optim.grad_accum_steps = 1  # every demo updates once per batch
  return common.with_demo(config, args)
