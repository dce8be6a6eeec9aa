#!/usr/bin/env bash
# One GPU lease's measurements, most valuable first: every row's JSON is written as soon as it is
# measured, rows already measured (here or in --done) are skipped, and profiles, logs and rows
# end up in one output folder (packed into results.tar.gz, split into 15 MB parts if larger).
#
#   launch/gpu_bench.sh --out=/tmp/gpu_bench [--done=DIR] [--python=python3] [--rows=a,b]
#                       [--goal_repo=DIR]   # a GOAL checkout: its released loop is timed too
#   launch/gpu_bench.sh --out=/tmp/smoke --variant=tiny/8 --rows=b16_64   # the script, on a CPU
#   launch/gpu_bench.sh --out=/tmp/smoke --variant=tiny/8 --rows=trainer_64
#
# Rows, in order (B/16, 248 tokens, bf16, cuDNN attention):
#   b16_64        global, GOAL, MulCLIP at batch 64, profiled, with HF eager and the
#                 official-style GOAL step (PyTorch) in the same process, and with
#                 --goal_repo GOAL's released loop itself (bench/official_goal.py)
#   trainer_64    global and GOAL at batch 64: the trainer's path fed by the Grain pipeline
#                 beside the step, the pipeline alone and its CPU per record by stage
#                 (`bench --trainer`), on 128 generated DOCCI-sized photos with the detail copy,
#                 prepared with --image_short_side=224 (B/16's input: the global resize is a copy);
#                 12 Grain worker processes x 2 read threads: a worker is about one core of
#                 per-record Python (the tokenizer and numpy hold the GIL, JPEG decodes and
#                 resizes release it, so a second thread fills those waits), and 4 of the 16
#                 cores stay with the trainer's process, which stacks each batch (77 MB of f32
#                 images at 64), copies it to the device and dispatches the step. At ~10 ms of
#                 CPU per GOAL record, 12 workers give ~1,200 records/s for the step's ~1,000.
#   b16_256       global, GOAL, MulCLIP at batch 256 (--remat=auto: the least recomputation
#                 whose compiled step XLA plans within the device's memory), profiled
#   b16_64_candidates  the global step at batch 64 as built and compiled or computed each other
#                 way of bench/candidates.py (XLA's Triton GEMMs, cuDNN GEMM fusions, the centred
#                 layer-norm variance alone and with XLA's cuDNN layer norm, the towers without
#                 the row-major layout pin, the EOT gather, cuDNN's patch convolution and the
#                 plain embedding scatter-add the step had before 2026-12-05), profiled:
#                 speed-up and first loss against the step as built, in one process
#   b16_64_short_text  GOAL, MulCLIP (from the cache: b16_64's programs) and FG-CLIP at batch 64
#                 as built and with shorter text rows: GOAL's local sentences at 77 tokens
#                 instead of 248 (short_local_text), MulCLIP's summary and sentences packed in one
#                 320-token row per pair instead of nine rows of 77 (packed_short_text), FG-CLIP's
#                 45 short captions in 12 rows of 128 instead of 45 of 77 (packed_region_text)
#   b16_16        the three at batch 16, with the PyTorch references
#   b16_64_cached GOAL at batch 64 again in a new process: compile time from JAX's cache
#   b16_64_compile  HF + torch.compile at batch 64 (its compilation is slow)
# The compilation cache is $GOAL_JAX_CACHE/jax (default /tmp/goal_jax_cache/jax).

set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

out_dir="" done_dir="" python="python3" variant="B/16" goal_repo=()
rows="b16_64,trainer_64,b16_256,b16_64_candidates,b16_64_short_text,b16_16,b16_64_cached"
rows+=",b16_64_compile"
for arg in "$@"; do
  case "$arg" in
    --out=*) out_dir="${arg#*=}" ;;
    --done=*) done_dir="${arg#*=}" ;;
    --python=*) python="${arg#*=}" ;;
    --rows=*) rows="${arg#*=}" ;;
    --variant=*) variant="${arg#*=}" ;;  # tiny/8: a smoke run of the script on a CPU
    --goal_repo=*) goal_repo=("$arg") ;;
    -h | --help) usage_from_header "$0"; exit 0 ;;
    *) die "unknown option $arg (--out=DIR [--done=DIR] [--python=PYTHON] [--rows=a,b]" \
         "[--goal_repo=DIR])" ;;
  esac
done
[[ -n "$out_dir" ]] || die "--out=DIR is required"
export GOAL_JAX_CACHE="${GOAL_JAX_CACHE:-/tmp/goal_jax_cache}"
export PYTHONPATH PYTHONUNBUFFERED=1
PYTHONPATH="$(checkout_pythonpath)"
work="$GOAL_JAX_CACHE/gpu_bench"  # rows and profiles; packed into --out after every row
mkdir -p "$out_dir" "$work/rows" "$work/profiles"
log="$out_dir/log.txt"

# Traces, compiled HLO and summaries and the rows in one archive (at most a few files come back
# from a lease); jax.profiler's own folders (the same trace as .xplane.pb) are left out.
pack() {
  local archive="$work/results.tar.gz"
  tar -czf "$archive.tmp" -C "$work" --exclude=plugins rows profiles && mv "$archive.tmp" "$archive"
  rm -f "$out_dir"/results.tar.gz*
  if (($(stat -c %s "$archive") > 15000000)); then
    split -b 15000000 -d "$archive" "$out_dir/results.tar.gz.part"
  else
    cp "$archive" "$out_dir/results.tar.gz"
  fi
}
# Also every minute, so a run stopped by the lease's limit brings back what it measured.
# Its output goes nowhere, so it never holds the caller's pipe open after the script ends.
(while sleep 60; do pack; done) >/dev/null 2>&1 &
packer=$!
trap 'pkill -P $packer 2>/dev/null; kill $packer 2>/dev/null' EXIT

bench_row() {  # name, then bench flags
  local name="$1"
  shift
  if [[ -s "$work/rows/$name.json" || ( -n "$done_dir" && -s "$done_dir/rows/$name.json" ) ]]; then
    echo "== $name: measured already, skipped" | tee -a "$log"
    return
  fi
  [[ ",$rows," == *",$name,"* ]] || return
  echo "== $name: $(date -u +%H:%M:%S) bench $*" | tee -a "$log"
  local start=$SECONDS
  "$python" -m goal_jax.bench --variant="$variant" --json_out="$work/rows/$name.json.part" "$@" \
    2>&1 | tee -a "$log"
  local status=${PIPESTATUS[0]}
  # A row file is complete only when its process finished; a killed one stays .part (kept).
  ((status == 0)) && mv "$work/rows/$name.json.part" "$work/rows/$name.json"
  echo "== $name: exit $status after $((SECONDS - start)) s (process wall time)" | tee -a "$log"
  pack
}

{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  "$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" 2>&1
} | tee -a "$log"

bench_row b16_64 --batch=64 --reference --no_compile --steps=5 --warmup=1 \
  --profile_dir="$work/profiles" "${goal_repo[@]}"
if [[ "$variant" == tiny/* ]]; then  # the smoke run on a CPU: the embedded data, a few steps
  trainer_args=(--trainer_data=synthetic --records=64 --workers=0 --steps=3 --warmup=1
    --stage_records=16)
else  # 12 x 2: see the header; 50 timed steps make what the workers buffered count little
  trainer_args=(--trainer_data=photos --records=128 --image_short_side=224 --workers=12
    --threads=2 --steps=50 --warmup=5)
fi
bench_row trainer_64 --trainer --batch=64 --methods=global,goal "${trainer_args[@]}"
bench_row b16_256 --batch=256 --remat=auto --steps=5 --warmup=1 --profile_dir="$work/profiles"
bench_row b16_64_candidates --batch=64 --methods=global --candidates=all --steps=5 --warmup=1 \
  --profile_dir="$work/profiles"
bench_row b16_64_short_text --batch=64 --methods=goal,mulclip,fgclip \
  --candidates=short_local_text,packed_short_text,packed_region_text --steps=5 --warmup=1 \
  --profile_dir="$work/profiles"
bench_row b16_16 --batch=16 --reference --no_compile --steps=10 --warmup=2 "${goal_repo[@]}"
bench_row b16_64_cached --batch=64 --methods=goal --steps=5 --warmup=1  # b16_64's program
bench_row b16_64_compile --batch=64 --methods=global --reference --steps=5 --warmup=2

echo "== done $(date -u +%H:%M:%S)" | tee -a "$log"
