r"""Long-CLIP (Zhang et al., ECCV 2024): long-caption InfoNCE + primary-component short InfoNCE.

  python -m goal_jax.train --config=configs/longclip.py:demo --workdir=/tmp/longclip_demo
  python -m goal_jax.train --config=configs/longclip.py:init=/ckpt/clip_l14,dataset=sharegpt4v,batch=2048 \
      --workdir=/runs/longclip_l14

Recipe (Long-CLIP, Zhang et al., ECCV 2024; https://github.com/beichenzbc/Long-CLIP): knowledge-preserved stretching 77 -> 248 with the first
20 positions frozen; short caption = the first sentence (our `summary` default); loss =
CE(v, t_long) + CE(PCM_32(v), t_short), label smoothing 0.1; logit scale re-initialised to ln(100);
AdamW lr 1e-6, wd 0.01, warmup 200, global batch 2048, ShareGPT4V 1.2M minus its first 1,000,
6 epochs. Cost: ~0.5 h on 8 A100s for B/16 (the authors' README).
"""
import math

import ml_collections

from goal_jax.configs import common


def get_config(arg=None):
  args = common.parse(arg, dataset="sharegpt4v", batch=2048, epochs=6.0)
  config = common.base_config("longclip", args)
  config.model.positions = "kps_frozen_prefix"
  config.reset_logit_scale = math.log(100.0)
  config.loss.weights = ml_collections.ConfigDict({"long": 1.0, "short": 1.0})
  config.loss.label_smoothing = 0.1
  config.loss.num_components = 32
  # PCA over the whole global batch, so the result does not depend on the device count;
  # "local": each device's rows alone, as Long-CLIP's DDP code does.
  config.loss.pca_scope = "global"
  # Long-CLIP's train.py: AdamW (PyTorch's betas and eps), lr 1e-6 with 200 warmup steps, then
  # cosine to 0; weight decay 0.01 on every parameter.
  config.optim.update(lr=1e-6, schedule="cosine", warmup_steps=200, lr_floor=0.0, b1=0.9,
                      b2=0.999, eps=1e-8, weight_decay=0.01)
  if args.demo:
    config.loss.num_components = 8
  return common.with_demo(config, args)
