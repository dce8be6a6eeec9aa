#!/usr/bin/env bash
# Trains on one GPU machine: one process sees all its GPUs (the mesh is jax.devices()), with the
# XLA flags that matter on GPUs and cuDNN attention (cuDNN's fused attention).
#
#   launch/gpu_node.sh --install -- \
#     --config=configs/goal.py:init=/ckpt/clip_b16,dataset=docci_lism,batch=64 \
#     --workdir=/runs/goal_b16
#
# Options:
#   --gpus=0,1,2,3        CUDA_VISIBLE_DEVICES (default: every GPU)
#   --attention=NAME      cudnn (default) or xla: --config.model.attention unless given
#   --mem_fraction=F      XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9)
#   --xla_flags="..."     more XLA flags (after the defaults, so they win)
#   --python=PYTHON       interpreter (default python3; e.g. a venv's)
#   --install             first pip install the pinned jax[cuda12] and this checkout
#   --dry_run             print the commands instead of running them

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

gpus="" attention="cudnn" mem_fraction="0.9" xla_flags="" python="python3" install=0
parse_options "gpus= attention= mem_fraction= xla_flags= python= install" "$@"
add_attention_override "$attention"
resolve_config_path

if ((install)); then
  run "$python" -m pip install -q -e "$REPO_ROOT" "jax[cuda12]==$(pinned_jax_version)"
fi
environment=(XLA_FLAGS="$(gpu_xla_flags "$xla_flags")"
             XLA_PYTHON_CLIENT_MEM_FRACTION="$mem_fraction" GOAL_JAX_DISTRIBUTED=0
             PYTHONPATH="$(checkout_pythonpath)")
[[ -z "$gpus" ]] || environment+=(CUDA_VISIBLE_DEVICES="$gpus")
run env "${environment[@]}" "$python" -m goal_jax.train "${TRAIN_ARGS[@]}"
