"""Writes notebooks/*.ipynb from the cells below; edit here, then run this file.

Keeping the source in one Python file keeps the notebooks small, reviewable and free of outputs;
tests/test_notebooks.py checks the committed files match.
"""
import os
import sys

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))
# The package is not on PyPI: the notebook installs it from where the user has it.
SOURCE_PARAMETER = (
    'GOAL_JAX_SOURCE = ""  # where to install goal_jax from when it is missing: a git URL\n'
    '                      # (git+https://...), a wheel (.whl) or a folder holding a checkout\n'
    '                      # (e.g. on Google Drive)')

INSTALL = '''\
import glob, importlib.util, os, subprocess, sys

def pip(*packages):
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages], check=True)

if importlib.util.find_spec("goal_jax") is None:  # Colab, or a fresh environment
  if not GOAL_JAX_SOURCE:
    raise SystemExit("goal_jax is not installed: set GOAL_JAX_SOURCE in the first cell to a git "
                     "URL, a wheel or a folder holding a checkout, then run this cell again")
  from importlib.metadata import PackageNotFoundError, requires, version
  from packaging.version import Version
  # The package alone first: its pinned jax would replace the runtime's own CUDA/TPU build.
  pip("--no-deps", GOAL_JAX_SOURCE)
  needs = [r.split(";")[0].strip() for r in requires("goal_jax") if "extra ==" not in r]
  pinned = next(r.split("==")[1] for r in needs if r.startswith("jax=="))
  try:
    kept = Version(version("jax")) >= Version(pinned)  # Colab's jax, new enough: keep it
  except PackageNotFoundError:
    kept = False
  pip(*[r for r in needs if not r.startswith("jax==")])
  if not kept:
    tpu = glob.glob("/dev/accel*") or "COLAB_TPU_ADDR" in os.environ
    gpu = subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0
    extra = "[tpu]" if tpu else "[cuda12]" if gpu else ""
    pip(f"jax{extra}=={pinned}")
import jax
print("jax", jax.__version__, jax.devices())'''


def _notebook(cells):
  for i, cell in enumerate(cells):
    cell.id = f"cell-{i}"  # stable ids: regenerating gives the same file
  nb = v4.new_notebook(cells=cells)
  nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                "name": "python3"},
                 "language_info": {"name": "python"}, "colab": {"provenance": []}}
  return nb


def _parameters(source):
  return v4.new_code_cell(source, metadata={"tags": ["parameters"]})


def quickstart():
  md, code = v4.new_markdown_cell, v4.new_code_cell
  return _notebook([
      md("# goal_jax quickstart\n\n"
         "Fine-tune a small CLIP with GOAL (or MulCLIP, global fine-tuning, Long-CLIP) on the "
         "dataset that ships with the package, measure long-caption retrieval, and look at what "
         "the model attends to. Nothing is downloaded but the package: the data is procedural "
         "(coloured shapes with long, sentence-per-object captions) and the starting CLIP is "
         "pretrained on its short captions first, as OpenAI CLIP is before GOAL fine-tunes it.\n\n"
         "3 to 4 minutes on 2 CPU cores (measured); faster on a GPU or TPU."),
      md("**Parameters.** `FAST = True` runs a few steps of each phase (a smoke test: the "
         "numbers then mean little)."),
      _parameters('FAST = False\nMETHOD = "goal"  # goal, mulclip, global or longclip\n'
                  'WORKDIR = "/tmp/goal_jax_quickstart"\n' + SOURCE_PARAMETER),
      md("## Install\n\nOn Colab (CPU, GPU or TPU runtime) this installs the package from "
         "`GOAL_JAX_SOURCE` (a git URL, a wheel, or a Drive folder holding a checkout) and keeps "
         "the runtime's own JAX when it is at least the pinned version (else it installs the "
         "pinned one, for CUDA or TPU); locally, `pip install -e .` in the checkout first."),
      code(INSTALL),
      md("## Train\n\n`<method>.py:demo` is the method's recipe (shipped in `goal_jax/configs/`) "
         "shrunk to the demo: a "
         "64 px CLIP with 8×8 patches, 64 text tokens (Long-CLIP's stretching of the 32 it was "
         "pretrained with), the embedded `synthetic` dataset. `goal_jax.demo.run_demo` prepares "
         "the data and the pretrained start (both cached in `~/.cache/goal_jax`), then runs the "
         "same training loop as `python -m goal_jax.train`, which evaluates at the end."),
      code('''\
import os, shutil
from goal_jax import config_utils, demo
from goal_jax.models import checkpoint as model_checkpoint

recipe = {"global": "global_ft"}.get(METHOD, METHOD) + ".py"
config = config_utils.load_config(config_utils.recipe_path(recipe), "demo")
shutil.rmtree(WORKDIR, ignore_errors=True)  # start afresh: the trainer resumes a workdir
pretrain_steps = demo.PRETRAIN_STEPS
if FAST:  # a few steps of each phase: a smoke test whose numbers mean little
  pretrain_steps = 8
  config.total_steps, config.optim.warmup_steps = 6, 2
  config.log_every, config.checkpoint_every = 2, 6
result = demo.run_demo(config, WORKDIR, pretrain_steps=pretrain_steps)'''),
      md("## Retrieval\n\nRecall@K of image→text and text→image retrieval on the held-out "
         "`test` split and over all of `test_hard`; then the question the benchmark is built "
         "for: inside each `test_hard` group of four scenes that differ in one detail (a colour, "
         "shape, size, texture, or which shape has which colour), does the model match each "
         "caption to its own image (chance 25 %), and per edit, does it prefer the right one of "
         "two (chance 50 %)?"),
      code('''\
from IPython.display import Markdown, display
from goal_jax.evaluation import benchmark_spec, report

profile, _ = benchmark_spec.resolve_benchmarks(config.evals.benchmarks)
document = report.results_document(profile, result["evaluation"])
display(Markdown(report.markdown_table(document, profile)))'''),
      md("## Training curves"),
      code('''\
from IPython.display import Image
from goal_jax import visualize
from goal_jax.training import metric_log

records = metric_log.read_metrics(os.path.join(WORKDIR, "metrics.jsonl"))
visualize.plot_curves(records, os.path.join(WORKDIR, "curves.png"), pattern="loss|logit_scale")
display(Image(os.path.join(WORKDIR, "curves.png")))'''),
      md("## What the model looks at\n\nLeft: GOAL's attention map (last vision block, heads "
         "averaged, attention each patch receives). Then, for each sentence of the caption, the "
         "softmax over patches of its similarity with each patch: after fine-tuning on long "
         "captions, each sentence should light up its own object."),
      code('''\
import numpy as np
from PIL import Image as PILImage
from goal_jax.data import synthetic

params, model_config = model_checkpoint.load_model(os.path.join(WORKDIR, "model"))
scene = synthetic.scene("test", 0)
image = PILImage.fromarray(synthetic.render(scene)[0])
summary, objects, relations = synthetic.describe(scene)
attention, _ = visualize.attention_overlay(params, model_config, image)
_, sentence_maps = visualize.sentence_overlays(params, model_config, image, objects)
path = os.path.join(WORKDIR, "maps.png")
visualize.save_grid([np.asarray(image), attention, *sentence_maps],
                    ["image", "GOAL attention map", *objects], path, columns=4)
display(Image(path))'''),
      md("## Next\n\n`byo_checkpoint_docci.ipynb` fine-tunes a real CLIP on DOCCI. The same "
         "steps from a shell: `python -m goal_jax.train --config=configs/goal.py:demo "
         "--workdir=/tmp/goal_demo`."),
  ])


def byo_checkpoint_docci():
  md, code = v4.new_markdown_cell, v4.new_code_cell
  return _notebook([
      md("# Bring your own checkpoint and DOCCI\n\n"
         "The papers' path at full scale: convert a pretrained CLIP, prepare DOCCI, fine-tune "
         "with GOAL or MulCLIP, evaluate long-caption retrieval, export to Hugging Face.\n\n"
         "You need, on local disk: a Hugging Face CLIP directory (e.g. "
         "`openai/clip-vit-base-patch16`: `config.json` and `model.safetensors` or "
         "`pytorch_model.bin`) and DOCCI "
         "(`docci_descriptions.jsonlines` and the `images/` folder from "
         "https://google.github.io/docci/); the cell after the install fetches both where they "
         "are missing. Use a GPU or TPU runtime: GOAL's recipe (B/16, batch 16, 10 epochs) is "
         "about 6k steps. On Colab `WORK` (converted checkpoint, prepared shards, runs) lives on "
         "Google Drive, so a disconnect costs nothing: run the notebook again and training "
         "resumes from its last checkpoint."),
      _parameters('HF_CHECKPOINT = "/content/clip-vit-base-patch16"  # local disk: fetched below\n'
                  'DOCCI_DIR = "/content/docci"  # local disk (7.1 GB of images): fetched below\n'
                  'WORK = "/content/drive/MyDrive/goal_jax"  # survives a disconnect\n'
                  'METHOD = "goal"  # goal or mulclip\n'
                  'BATCH, EPOCHS = 16, 10\n' + SOURCE_PARAMETER),
      code(INSTALL),
      md("## 0. Weights, DOCCI and a workdir that survives\n\nMounts Google Drive when `WORK` "
         "is on it, then downloads what is missing: `openai/clip-vit-base-patch16` from the "
         "Hugging Face Hub, and DOCCI's descriptions and images (CC BY 4.0) from Google's bucket, "
         "the images unpacked as they stream in."),
      code('''\
import tarfile, urllib.request

if WORK.startswith("/content/drive") and "google.colab" in sys.modules:
  from google.colab import drive
  drive.mount("/content/drive")
os.makedirs(WORK, exist_ok=True)
if not os.path.isfile(f"{HF_CHECKPOINT}/config.json"):
  from huggingface_hub import snapshot_download
  snapshot_download("openai/clip-vit-base-patch16", local_dir=HF_CHECKPOINT,
                    allow_patterns=["*.json", "*.safetensors", "*.txt"])
DOCCI_URL = "https://storage.googleapis.com/docci/data"
os.makedirs(DOCCI_DIR, exist_ok=True)
if not os.path.isfile(f"{DOCCI_DIR}/docci_descriptions.jsonlines"):
  urllib.request.urlretrieve(f"{DOCCI_URL}/docci_descriptions.jsonlines",
                             f"{DOCCI_DIR}/docci_descriptions.jsonlines")
if not os.path.isdir(f"{DOCCI_DIR}/images"):  # -> images/<example_id>.jpg
  with urllib.request.urlopen(f"{DOCCI_URL}/docci_images.tar.gz") as stream:
    tarfile.open(fileobj=stream, mode="r|gz").extractall(DOCCI_DIR, filter="data")
print(len(os.listdir(f"{DOCCI_DIR}/images")), "DOCCI images")'''),
      code('''\
import os, subprocess, sys
START, DATA = f"{WORK}/clip_248", f"{WORK}/tfds"
RUN = f"{WORK}/runs/{METHOD}"

def run(module, *args):
  """`python -m module args`, echoed, output streamed, stops the notebook on failure."""
  print("$ python -m", module, *args, flush=True)
  subprocess.run([sys.executable, "-m", module, *args], check=True)'''),
      md("## 1. Convert the checkpoint\n\nWrites Orbax params and `model_config.json`, with the "
         "text positions stretched from 77 to 248 (Long-CLIP's knowledge-preserving "
         "stretching, which GOAL and MulCLIP start from). `openai:<file.pt>` and "
         "`open_clip:<file>` work too."),
      code('run("goal_jax.convert", f"--source=hf:{HF_CHECKPOINT}", f"--out={START}", '
           '"--text_context=248")'),
      md("## 2. Prepare DOCCI\n\nOne ArrayRecord record per image: the image pre-resized to a "
         "256 px short side, the long caption, its sentences with character offsets. Bad records "
         "stop the run with the file and record named."),
      code('run("goal_jax.prepare", "--dataset=docci", f"--manual_dir={DOCCI_DIR}", '
           'f"--data_dir={DATA}")'),
      md("**GOAL only: local pairs.** GOAL trains on (image crop, sentence) pairs mined by LISM: "
         "segment the image, score each segment against each sentence with a CLIP, keep the best. "
         "GOAL scores with `openai/clip-vit-large-patch14-336`; any converted CLIP works. The "
         "output is a new dataset, `docci_lism`. MulCLIP needs none."),
      code('''\
dataset = "docci"
if METHOD == "goal":
  run("goal_jax.lism", f"--data_dir={DATA}", "--dataset=docci", "--split=train",
      f"--checkpoint={START}")
  dataset = "docci_lism"'''),
      md("## 3. Fine-tune\n\nThe method's config file is the recipe (its docstring says what "
         "each number comes from); the `:` suffix and `--config.x=y` override fields. The run "
         "checkpoints as it goes and resumes if interrupted; `RUN/model` is the final CLIP."),
      code('''\
run("goal_jax.train",
    f"--config=configs/{METHOD}.py:init={START},dataset={dataset},data_dir={DATA},"
    f"batch={BATCH},epochs={EPOCHS}",
    f"--workdir={RUN}")'''),
      md("## 4. Evaluate\n\nLong-caption retrieval on DOCCI's test split (Recall@1/5/10 both "
         "ways). `--benchmarks=goal` runs the GOAL paper's table once its datasets are prepared."),
      code('''\
run("goal_jax.evaluate", f"--checkpoint={RUN}/model", "--benchmarks=docci:test",
    f"--data_dir={DATA}", f"--out={RUN}/eval_docci.json")'''),
      md("## 5. Export to Hugging Face\n\nA `CLIPModel` directory (config, safetensors, "
         "tokenizer, image processor) that `transformers` loads as is, with the 248-token text "
         "positions; `CLIPProcessor.from_pretrained` reads it too."),
      code('''\
run("goal_jax.export_hf", f"--checkpoint={RUN}/model", f"--out={WORK}/{METHOD}_hf", "--overwrite")
try:
  import transformers
  model = transformers.CLIPModel.from_pretrained(f"{WORK}/{METHOD}_hf")
  print(model.config.text_config.max_position_embeddings, "text positions")
except ImportError:
  print("pip install transformers torch to load the export")'''),
  ])


NOTEBOOKS = {"quickstart.ipynb": quickstart, "byo_checkpoint_docci.ipynb": byo_checkpoint_docci}


def main(out_dir=HERE):
  for name, build in NOTEBOOKS.items():
    nb = build()
    nbformat.validate(nb)
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      nbformat.write(nb, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
