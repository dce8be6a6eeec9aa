r"""MulCLIP: global (long + ½ summary), word-patch reconstruction (WPR) and sub-caption patches (SAP).

  python -m goal_jax.train --config=configs/mulclip.py:demo --workdir=/tmp/mulclip_demo
  python -m goal_jax.train --config=configs/mulclip.py:init=/ckpt/clip_b16,dataset=docci \
      --workdir=/runs/mulclip_b16_docci

L = InfoNCE(v, t_long) + ½·InfoNCE(v, t_summary) + λ_W·WPR + λ_S·SAP, λ = 1
(MulCLIP's objective as its paper states it). The paper's optimiser is not public; we use GOAL's regime,
which MulCLIP evaluates against (AdamW 5e-6 cosine, wd 0.05, batch 16, 10 epochs, 248 tokens), and
train the two token calibration modules (FineLIP's ATRM, N' = 39) at 40x the CLIP learning rate,
as FineLIP trains its cross-net at 2e-4 against 1e-6 (capped here at 2e-4). Sentences and the
summary are encoded at 77 tokens, at most `max_sentences` (8) per caption.
Open choices (WPR/SAP temperatures, SAP's patches, aggregation, scale, stop-gradient) are
`config.loss` fields; `goal_jax/losses/mulclip.py:MulCLIPOptions` says which default was chosen
and why.
Cost: one vision forward, one 248-token and (1 + M) 77-token text forwards per pair; with
`--config.input.short_text_packing=N` the summary and sentences share one N-token row per pair
(`goal_jax/text/packing.py`: the same embeddings; sentences past N tokens are dropped and logged
as `short_text/dropped`, so pick N from your captions' lengths).

Ablations (project page table) are weight overrides:
  global only  --config.loss.weights.wpr_image=0 --config.loss.weights.wpr_text=0 --config.loss.weights.sap=0
  w/o SAP      --config.loss.weights.sap=0
  w/o WPR      --config.loss.weights.wpr_image=0 --config.loss.weights.wpr_text=0
"""

import ml_collections
from ml_collections import config_dict

from goal_jax.configs import common
from goal_jax.configs import goal


def get_config(arg=None):
  args = common.parse(arg)
  config = common.base_config("mulclip", args)
  config.optim.update(goal.RECIPE_OPTIMIZER)  # MulCLIP's is not public; GOAL's, as said above
  config.optim.param_groups = (("calibration/.*", 40.0),)
  # λ_W = λ_S = 1, the summary at ½; λ_W weighs both WPR directions.
  config.loss.weights = ml_collections.ConfigDict(
      {"global_long": 1.0, "global_summary": 0.5, "wpr_image": 1.0, "wpr_text": 1.0, "sap": 1.0})
  config.loss.calibration_tokens = 39
  # The paper's open choices (`goal_jax/losses/mulclip.py:MulCLIPOptions` says why each).
  config.loss.wpr_attention_temperature = 0.07  # WPR's word-patch attention softmax
  config.loss.wpr_temperature = 0.07  # WPR's within-sample InfoNCE
  config.loss.wpr_symmetric = True  # WPR's InfoNCE over both softmax directions
  config.loss.token_alignment = "wpr"  # | clim: FineLIP's batch-wise late interaction instead
  config.loss.sap_patches = "calibrated"  # | raw: SAP aggregates the projected patch tokens
  config.loss.sap_aggregation = "softmax"  # | top_k (sap_top_k best) | argmax (straight-through)
  config.loss.sap_temperature = 0.07  # SAP's sentence-to-patch softmax
  config.loss.sap_top_k = config_dict.placeholder(int)  # the k of top_k (alone: means top_k)
  config.loss.sap_logit_scale = "shared"  # | own (learnt, from CLIP's) | fixed (below)
  config.loss.sap_fixed_temperature = 0.07  # SAP's temperature when sap_logit_scale=fixed
  config.loss.sap_stop_gradient = "sentence"  # SAP trains the image side only | none
  config.input.update(short_text_packing=0, short_text_rows=1)  # | N, 1: one N-token row
  if args.demo:
    # At init each calibrated token is a near-uniform average of the same tokens (mean pairwise
    # cosine .997 image / .979 text here; PyTorch's default init, which FineLIP uses, gives
    # 1.000 / .997), so WPR sits at ln(16) for the first ~100 demo steps; a 40x module lr left
    # that unchanged (README, results), so the demo keeps a modest 3x.
    config.loss.calibration_tokens = 16
    config.optim.param_groups = (("calibration/.*", 3.0),)
  return common.with_demo(config, args)
