"""The defaults every recipe starts from, importable without the library.

Why: a method config (`goal_jax/configs/*.py`) imports only this module and `config_utils`, as
big_vision's configs import only their helpers, so a recipe can be read, loaded and copied
without JAX. The library modules that give these values their meaning (the optimizer, the input
pipeline, GOAL's reproduction switches) import them from here, so each is written once. A
method's own values (its term weights and options) are written out in its recipe, beside the
defaults in its `goal_jax/losses/<method>.py`; `tests/test_config_utils.py` checks they agree.
Only the standard library is imported.
"""

DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # where `prepare` writes and the others read

# The fields of `config.optim` and the values of those a recipe may leave out
# (`goal_jax.training.optimizer`). The recipes themselves (learning rate, decay, betas, warmup)
# are written in each method's config.
OPTIMIZER = dict(
    lr=None,              # peak learning rate: required
    schedule="cosine",    # "cosine" (to lr_floor) or "constant"
    warmup_steps=0,       # linear warmup before the schedule, in optimizer steps
    total_steps=None,     # optimizer steps of the whole run; needed by "cosine"
    lr_floor=0.0,         # the cosine's final value (absolute, not a fraction of lr)
    b1=0.9,               # AdamW's usual betas and eps (PyTorch's and optax's defaults)
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    decay_regex=None,     # None decays every param; else only names that fully match
    param_groups=(),      # (regex, multiplier or None to freeze); first match wins; default 1x
    grad_clip_norm=None,  # clip by the global norm of the trainable gradients
    grad_accum_steps=1,   # optax.MultiSteps: average k batches per update
)

# The backbone families a recipe can start from (`configs/<method>.py:backbone=...`): the variant
# built without an init checkpoint, the demo's tiny one, and the text contexts: the pretrained
# one (short captions, sentences) and Long-CLIP's stretch of it for long captions.
BACKBONES = {
    "clip": dict(default_variant="B/16", demo_variant="demo", short_context=77,
                 long_context=248),
    "siglip": dict(default_variant="siglip2-B/16-256", demo_variant="siglip-demo",
                   short_context=64, long_context=196),
}

# The input pipeline's config (`goal_jax.data.pipeline.default_config`): ViT-B/16 at 224 px,
# 248-token captions, CLIP's centre crop.
INPUT = dict(
    dataset="synthetic",
    split="train",
    batch_size=32,         # global batch; each process gets batch_size / process_count
    image_size=224,
    patch_size=16,         # from the model config: the patch grid is image_size / patch_size
    text_context=248,
    sentence_context=77,
    max_sentences=8,
    short_text_packing=0,  # > 0: the short captions (summary, sentences, region captions and
                           # hard negatives) packed in rows of N tokens (`goal_jax.text.packing`)
    short_text_rows=1,     # rows of short_text_packing tokens per pair; captions past them dropped
    local_context=0,       # tokens of GOAL's local sentence (`local_text`); 0: text_context,
                           # as GOAL's code; fewer: the same embedding for sentences that fit
    caption_sentences=0,   # > 0: `text` is the caption's first N sentences (short captions)
    max_regions=4,         # regions (boxed pairs) per record: FG-CLIP's `max_anns`
    region_context=77,     # tokens of a region's caption and of its hard negatives
    hard_negatives=10,     # K hard-negative captions per region (FG-CLIP: 10)
    geometry="center_crop",  # or "squash"
    normalize_on="host",   # or "device": images stay uint8 pixels, the train step normalises
    span_mode="exact",     # or "goal": GOAL's span rule (+1 shift, truncation fallback)
    box_mode="exact",      # or "goal": GOAL's naive stretch of boxes onto the grid
    text_norm="clip",      # or "hf": the caption normalised as GOAL's HF tokenizer does
    box_grid_patch=0,      # box_mode=goal: patch side boxes are cut with (0: the model's)
    box_norm="image",      # box_mode=goal: divide boxes by the image size, or "json" (crop)
    compat="",             # "goal": every behaviour of GOAL's released code; "goal_fixed": (COMPAT)
    fields="all",          # "all", or groups joined by ",": global, summary, sentences, local,
                           # regions
    num_workers=0,         # > 0: Grain multiprocessing prefetch
    read_threads=2,
    prefetch_buffer_size=8,
    seed=0,
)

# Reproduction switches (`config.input.compat`, `goal_jax.data.reproduction`): each value sets
# these fields (https://github.com/PerceptualAI-Lab/GOAL). `goal`: the released
# `goal_loss_finetuning.py` (HEAD 2db3d4a); `goal_fixed`: the authors' later `goal.py` (4c04bc8,
# Aug 2025), which divides boxes by the true image size instead. Both need shards split with
# GOAL's rule (`prepare --splitter=goal`).
COMPAT = {
    "goal": dict(span_mode="goal", text_norm="hf", box_mode="goal", box_grid_patch=16,
                 box_norm="json", geometry="center_crop"),
    "goal_fixed": dict(span_mode="goal", text_norm="hf", box_mode="goal", box_grid_patch=16,
                       box_norm="image", geometry="center_crop"),
}
