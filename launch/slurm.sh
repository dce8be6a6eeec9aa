#!/usr/bin/env bash
# Trains on several GPU nodes with SLURM: submits a batch job that `srun`s one process per node
# (each sees all its node's GPUs); goal_jax.distributed joins them from SLURM's variables (the
# coordinator is the job's first node). The checkout and the Python environment must be on a
# filesystem every node shares; so must --workdir and the data.
#
#   launch/slurm.sh --nodes=4 --gpus_per_node=8 --partition=gpu --time=12:00:00 \
#     --python=/shared/venv/bin/python -- \
#     --config=configs/mulclip.py:init=/shared/ckpt/clip_l14,variant=L/14,batch=512 \
#     --workdir=/shared/runs/mulclip_l14 --config.input.data_dir=/shared/tfds
#
# Options:
#   --nodes=N             nodes (required)
#   --gpus_per_node=G     GPUs per node (default 8)
#   --partition=P, --account=A, --time=HH:MM:SS, --job_name=NAME (default goal_jax)
#   --attention=NAME      cudnn (default) or xla: --config.model.attention unless given
#   --mem_fraction=F      XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9)
#   --xla_flags="..."     more XLA flags (after the defaults, so they win)
#   --python=PYTHON       interpreter on the nodes (default python3)
#   --dry_run             print the batch script and the sbatch command instead of submitting

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nodes="" gpus_per_node=8 partition="" account="" time="" job_name="goal_jax"
attention="cudnn" mem_fraction="0.9" xla_flags="" python="python3"
parse_options "nodes= gpus_per_node= partition= account= time= job_name= attention= \
mem_fraction= xla_flags= python=" "$@"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$nodes'"
[[ "$gpus_per_node" =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node must be a positive integer"
add_attention_override "$attention"
resolve_config_path

directives=(--job-name="$job_name" --nodes="$nodes" --ntasks-per-node=1
            --gpus-per-node="$gpus_per_node" --exclusive --output="$job_name-%j.out")
[[ -z "$partition" ]] || directives+=(--partition="$partition")
[[ -z "$account" ]] || directives+=(--account="$account")
[[ -z "$time" ]] || directives+=(--time="$time")

batch_script() {
  echo "#!/usr/bin/env bash"
  printf '#SBATCH %s\n' "${directives[@]}"
  echo "set -euo pipefail"
  echo "export $(quote "PYTHONPATH=$(checkout_pythonpath)")"
  echo "export $(quote "XLA_FLAGS=$(gpu_xla_flags "$xla_flags")")"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$(quote "$mem_fraction")"
  echo "srun --kill-on-bad-exit=1 $(quote "$python" -m goal_jax.train "${TRAIN_ARGS[@]}")"
}

if ((DRY_RUN)); then
  echo "# batch script (sbatch reads it from stdin):"
  batch_script
  echo "# submitted with:"
  quote sbatch
else
  batch_script | run sbatch
fi
