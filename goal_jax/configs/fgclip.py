r"""FG-CLIP (Xie et al., ICML 2025): long + short captions, region captions, hard negatives.

  python -m goal_jax.train --config=configs/fgclip.py:demo --workdir=/tmp/fgclip_demo
  python -m goal_jax.prepare --dataset=finehard --manual_dir=/path/to/FineHARD
  python -m goal_jax.train --config=configs/fgclip.py:init=/ckpt/clip_b16 \
      --workdir=/runs/fgclip_b16_finehard

Recipe (FG-CLIP's second stage as released, https://github.com/360CVGroup/FG-CLIP at 0fcea59:
`scripts/train.sh`, `fgclip/train/train_fgclip.py`, `fgclip/model/clip_strc/fgclip.py`), from
OpenAI CLIP (`--from_openai True`) on FineHARD:
L = InfoNCE(v, t_long) + InfoNCE(v, t_short) + 0.1·L_region + 0.5·L_hard, one learnable
temperature for the two global terms and one of its own for each region term, both started at
CLIP's; long captions at 248 tokens (Long-CLIP's stretch, one trainable table: the release's
two copies are both trainable and each serves its own rows), the short caption
("a photo of " + short caption) and region captions at 77; at most 4 boxes per image, 10 hard
negatives per box; images squashed to 224 px (`image.resize((224, 224))`); AdamW (PyTorch's
betas and eps), lr 1e-6, 200 warmup steps then cosine to 0, weight decay 0.001 except biases and
LayerNorm params (the HF Trainer's rule), batch 512 per device on 8 devices (4096), 1 epoch.
On SigLIP (`backbone=siglip`) every contrastive term but the hard one is the sigmoid and the
short texts are read at its 64 tokens.

Where we differ from the release:
- one text position table and one text projection: the release keeps CLIP's 77-row table for
  short texts beside the stretched one, and a copy of the projection for long captions
  (`text_filip_projection`); ours read the stretched table's first rows and one head;
- region features pool the last block's projected patch tokens, where the release sends the
  penultimate block's through the last block with attention cut to the value path;
- the region term's negatives are the regions of the global batch (the release: of one GPU);
- one caption per region for both region terms (the release draws short or long expression at
  random for the region term; FineHARD's reader keeps the short one, which the negatives edit).
The paper trains this stage on a cluster of 160 Ascend 910B NPUs; the released script (8
devices at 512) is what the recipe writes.

Cost: the summary, region captions and hard negatives are 45 text rows of 77 tokens per image,
83 % of the step's FLOPs at B/16; `--config.input.short_text_packing=128
--config.input.short_text_rows=12` packs them in 12 rows of 128 (`goal_jax/text/packing.py`: the
same embeddings, 0.54x the FLOPs; captions past the rows are dropped and logged as
`short_text/dropped`).

Ablation: without hard negatives  --config.loss.weights.hard_negative=0 (`fgclip_no_hard`).
The demo trains on the synthetic data's object and relation cells and their one-attribute edits,
4 of the generator's 10 per region (`--config.input.hard_negatives=10` for all: ~1.7x the time).
"""
import ml_collections

from goal_jax import constants
from goal_jax.configs import common

# The HF Trainer's weight-decay rule the release trains with: every parameter but those with
# "bias" in their name (so also SigLIP's `logit_bias`) and LayerNorm params (`.../scale`).
DECAY_REGEX = r"(?!.*bias)(?!.*/scale$).*"


def get_config(arg=None):
  args = common.parse(arg, dataset="finehard", batch=4096, epochs=1.0)
  config = common.base_config("fgclip", args)
  config.model.positions = "kps"
  config.input.geometry = "squash"
  # Region captions and their hard negatives at the pretrained context, as the short caption.
  config.input.update(max_regions=4, hard_negatives=10,
                      region_context=constants.BACKBONES[args.backbone]["short_context"])
  config.input.update(short_text_packing=0, short_text_rows=1)  # | 128, 12: packed (above)
  config.optim.update(lr=1e-6, schedule="cosine", warmup_steps=200, lr_floor=0.0, b1=0.9,
                      b2=0.999, eps=1e-8, weight_decay=0.001, decay_regex=DECAY_REGEX)
  config.loss.weights = ml_collections.ConfigDict(
      {"global_long": 1.0, "global_short": 1.0, "region": 0.1, "hard_negative": 0.5})
  if args.demo:
    config.input.region_context = 24  # the demo's sentence context: a synthetic sentence fits
    # 4 of each region's 10 hard negatives: at 10 they are 40 of an image's 45 short texts and
    # ~80 % of a demo step (1.4 s against 0.8 s at 4 and 0.25 s without the term, on 2 cores).
    config.input.hard_negatives = 4
  return common.with_demo(config, args)
