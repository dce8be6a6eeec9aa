"""What every method config shares: model, input, optimizer, logging, mesh.

Each method file (`goal.py`, `mulclip.py`, `global_ft.py`, `longclip.py`, `finelip.py`) starts
from `base_config`, writes its optimizer and loss as the paper's recipe, and ends with
`with_demo`. The `demo` arg swaps in the
embedded `synthetic` dataset and a tiny model that fine-tunes on 2 CPU cores in a few minutes,
starting from a checkpoint pretrained on the synthetic short captions (see `goal_jax/demo.py`).
"""
import ml_collections
from ml_collections import config_dict

from goal_jax import config_utils
from goal_jax import constants

# Knobs every method accepts after `:` (`--config=configs/goal.py:variant=L/14,batch=32`).
ARG_DEFAULTS = dict(
    demo=False,       # tiny model on the embedded synthetic data, a few minutes on a CPU
    backbone="clip",  # "clip" or "siglip": the family of the demo and of `variant`'s default
    variant="",       # model variant without an init checkpoint; "": the backbone's (B/16,
                      # siglip2-B/16-256); an init checkpoint's architecture always wins
    init="",          # a `python -m goal_jax.convert` output; required outside the demo
    dataset="docci",  # prepared dataset name (`python -m goal_jax.prepare --dataset=NAME`)
    data_dir=constants.DEFAULT_DATA_DIR,
    batch=16,
    epochs=10.0,
    steps=0,          # > 0 overrides epochs
    data_seed=0,      # demo: generator seed of the embedded synthetic data (same statistics)
    data_version=0,   # demo: the synthetic generator's version; 0: the latest (3, with transfer
                      # splits); 2 or 1 reproduce earlier results
)


def parse(arg, **method_defaults):
  return config_utils.parse_arg(arg, **{**ARG_DEFAULTS, **method_defaults})


def base_config(method: str, args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A full config for `method` at the paper scale; method files then set optimizer and loss."""
  config = ml_collections.ConfigDict()
  config.method = method
  config.demo = args.demo
  config.seed = 0
  config.model_init = args.init
  config.reset_logit_scale = config_dict.placeholder(float)  # Long-CLIP: ln(100)

  if args.backbone not in constants.BACKBONES:
    raise ValueError(f"config arg backbone={args.backbone!r}: expected one of "
                     f"{sorted(constants.BACKBONES)}")
  backbone = constants.BACKBONES[args.backbone]
  config.model = ml_collections.ConfigDict(dict(
      variant=args.variant or backbone["default_variant"],
      tokenizer="",               # SigLIP from random weights: its SentencePiece .model
      text_context=0,             # 0: Long-CLIP's stretch of the backbone (CLIP 77 -> 248,
                                  # SigLIP 64 -> 196, as FG-CLIP 2)
      positions="kps",            # one trainable table (GOAL); "kps_frozen_prefix": Long-CLIP
      frozen_prefix=20,
      dtype="bfloat16",           # compute; params stay fp32
      attention="xla",            # "cudnn" on GPUs (fused kernel), "pallas_tpu" on TPUs (flash)
      remat="",                   # "", "full" or "dots"
      scan=False,
  ))

  config.input = ml_collections.ConfigDict(constants.INPUT)
  config.input.data_dir = args.data_dir
  config.input.dataset = args.dataset
  config.input.split = "train"
  config.input.batch_size = args.batch
  config.input.geometry = ""  # the backbone's: CLIP's centre crop, SigLIP's squash
  config.input.normalize_on = "device"  # uint8 pixels to the device: less input CPU and copy
  config.input.sentence_context = 0  # summary and sentences: the backbone's pretrained context

  # The method file writes its recipe's values (`config.optim.update(lr=..., ...)`).
  config.optim = ml_collections.ConfigDict(
      {k: v for k, v in constants.OPTIMIZER.items() if k != "total_steps"})
  config.optim.lr = config_dict.placeholder(float)
  config.optim.decay_regex = config_dict.placeholder(str)
  config.optim.grad_clip_norm = config_dict.placeholder(float)
  config.total_epochs = args.epochs
  config.total_steps = args.steps

  config.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0))
  config.loss.max_scale = config_dict.placeholder(float)
  # Every contrastive term's form: "softmax" (InfoNCE) or "sigmoid" (SigLIP's); None: the loss
  # the backbone was pretrained with. The sigmoid runs as the SigLIP paper's ring on a mesh.
  config.loss.contrastive = config_dict.placeholder(str)
  config.loss.sigmoid_sharding = "ring"  # or "gather"
  # Two rows of a batch with the same text (token ids) or the same record are the same pair:
  # "positive" (multi-positive InfoNCE targets), "mask" (out of each other's denominators) or
  # "negative" (the papers' InfoNCE). Logged per step as `duplicate_pairs/*`.
  config.loss.duplicates = "positive"

  config.log_every = 50
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.tensorboard = True
  config.progress_bar = True
  config.eval_every = 0  # steps; the end of training always evaluates when benchmarks are set
  # `benchmarks`: a profile, benchmark names or `dataset:split`; the results table follows from
  # it (`evaluation.benchmark_spec`).
  config.evals = ml_collections.ConfigDict(dict(benchmarks="", data_dir="", batch_size=64))

  config.mesh = [("data", -1)]
  config.sharding = [(".*", "replicate")]  # FSDP: [(".*", 'fsdp(axis="data")')]
  return config


def with_demo(config: ml_collections.ConfigDict,
              args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The method's config, or with the `demo` arg its demo: the last call of every method file."""
  if args.demo:
    demo_overrides(config, args)
  return config


def demo_overrides(config: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
  """Tiny model, embedded synthetic data, a learning rate for a short run from a weak start."""
  config.demo_data = ml_collections.ConfigDict(dict(
      seed=args.data_seed,  # `prepare synthetic --seed`: another draw
      version=args.data_version,  # `prepare synthetic --version`; 0: the latest
      pretrain_steps=0))    # of the cached start; 0: goal_jax.demo's (fewer: smoke runs)
  config.model.variant = constants.BACKBONES[args.backbone]["demo_variant"]
  config.model.dtype = "float32"  # CPUs gain nothing from bf16
  config.input.dataset = "synthetic"
  config.input.data_dir = ""      # the demo prepares it into its cache (goal_jax/demo.py)
  config.input.batch_size = 32
  config.input.max_sentences = 7        # a synthetic caption has at most 7 sentences
  config.input.sentence_context = 24    # its longest sentence is 14 tokens
  config.input.read_threads = 2
  # The regime was fixed on global fine-tuning alone, the same for every method: 300 steps (3.2
  # epochs) at 1e-3, whose curves flatten as the cosine ends; 1-2 minutes a run on 2 CPU cores.
  config.total_epochs = 0.0
  config.total_steps = 300
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 20
  config.optim.weight_decay = 0.05
  config.log_every = 25
  config.checkpoint_every = 100
  # Versions before 3 have no transfer splits: their profile leaves them out.
  config.evals.benchmarks = "synthetic" if args.data_version in (0, 3) else "synthetic_v2"
  config.evals.batch_size = 100
