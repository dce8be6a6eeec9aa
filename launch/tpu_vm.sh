#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: create it, copy this checkout to every worker, install jax[tpu]
# and goal_jax, run `python -m goal_jax.train TRAIN_ARGS` on all workers at once (their logs
# stream here and go to ~/goal_jax_train.log on each), then delete the VM (also on failure).
# Every worker runs the same command; goal_jax.distributed joins them (TPU auto-detection).
# Data and workdir must be on GCS so all workers share them: each bucket that a gs:// path of the
# training arguments names is mounted with gcsfuse at /mnt/gcs/<bucket> on every worker, and the
# command gets the mounted paths (goal_jax reads and writes through the local file system).
#
#   launch/tpu_vm.sh --name=goal-v4 --zone=us-central2-b --accelerator=v4-32 -- \
#     --config=configs/goal.py:init=gs://bkt/ckpt/clip_b16,dataset=docci_lism,batch=256 \
#     --config.input.data_dir=gs://bkt/tfds --workdir=gs://bkt/runs/goal_b16
#
# Options:
#   --name=NAME           TPU VM (and queued resource) name (required)
#   --zone=ZONE           e.g. us-central2-b (required)
#   --accelerator=TYPE    e.g. v4-32, v5litepod-16, v6e-8 (required unless --reuse)
#   --version=RUNTIME     TPU software version (default tpu-ubuntu2204-base)
#   --project=PROJECT     default: gcloud's configured project
#   --queued              create through a queued resource and wait until it is ACTIVE
#   --spot                spot capacity (cheaper, preemptible; the trainer resumes)
#   --repo=URL[@REF]      git clone this on the workers instead of copying the local checkout
#   --attention=NAME      xla (default) or pallas_tpu (Pallas flash attention; both lower for
#                         TPUs, tests/test_tpu_lowering.py; xla until a TPU measurement says
#                         otherwise): --config.model.attention unless given
#   --reuse               the VM exists: do not create it (and do not delete it)
#   --keep                do not delete the VM at the end
#   --dry_run             print the commands instead of running them

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name="" zone="" accelerator="" version="tpu-ubuntu2204-base" project="" repo="" attention="xla"
queued=0 spot=0 reuse=0 keep=0
parse_options "name= zone= accelerator= version= project= repo= attention= queued spot reuse keep" "$@"
add_attention_override "$attention" "xla pallas_tpu"
[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required"
((reuse)) || [[ -n "$accelerator" ]] || die "--accelerator is required (or --reuse an existing VM)"
[[ -n "$(train_arg --workdir "${TRAIN_ARGS[@]}")" ]] || die "the training arguments need --workdir"
warn_unless_gcs --workdir "$(train_arg --workdir "${TRAIN_ARGS[@]}")"
warn_unless_gcs --config.input.data_dir "$(train_arg --config.input.data_dir "${TRAIN_ARGS[@]}")"

where=(--zone="$zone")
[[ -z "$project" ]] || where+=(--project="$project")
capacity=()
((spot == 0)) || capacity=(--spot)
tpu_vm=(gcloud compute tpus tpu-vm)
on_all_workers() {
  run "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"
}

delete_vm() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run "${tpu_vm[@]}" delete "$name" "${where[@]}" --quiet
  fi
}

wait_until_active() {
  local state
  local describe=(gcloud compute tpus queued-resources describe "$name" "${where[@]}"
                  --format="value(state.state)")
  if ((DRY_RUN)); then
    echo "# until ACTIVE: $(quote "${describe[@]}")"
    return
  fi
  while true; do
    state="$("${describe[@]}")"
    case "$state" in
      ACTIVE) return ;;
      FAILED | SUSPENDED) die "queued resource $name is $state" ;;
    esac
    echo "queued resource $name: $state; waiting" >&2
    sleep 30
  done
}

if ((!reuse)); then
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${capacity[@]}"
  else
    run "${tpu_vm[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" \
      --version="$version" "${capacity[@]}"
  fi
  if ((!keep)); then
    if ((DRY_RUN)); then
      echo "# on exit, also on failure:"
      delete_vm
    else
      trap delete_vm EXIT
    fi
  fi
  ((queued == 0)) || wait_until_active
fi

if [[ -n "$repo" ]]; then
  ref="" url="$repo"
  if [[ "$repo" == *@* && "$repo" != *@*:* ]]; then
    url="${repo%@*}" ref="${repo##*@}"
  fi
  fetch="rm -rf ~/goal_jax && git clone -q $(quote "$url") ~/goal_jax"
  [[ -z "$ref" ]] || fetch+=" && git -C ~/goal_jax checkout -q $(quote "$ref")"
  on_all_workers "$fetch"
else
  # Tracked and new files of the checkout, without ignored ones (venvs, caches, outputs).
  tarball="${TMPDIR:-/tmp}/goal_jax_$name.tgz"
  pack="git ls-files -co --exclude-standard -z | tar --null -czf $(quote "$tarball") -T -"
  run bash -c "cd $(quote "$REPO_ROOT") && $pack"
  run "${tpu_vm[@]}" scp "$tarball" "$name:goal_jax.tgz" "${where[@]}" --worker=all
  on_all_workers "rm -rf ~/goal_jax && mkdir ~/goal_jax && tar -xzf ~/goal_jax.tgz -C ~/goal_jax"
fi

venv="(python3 -c 'import ensurepip' 2>/dev/null || (sudo apt-get -qq update &&"
venv+=" sudo apt-get -qq install -y python3-venv)) && python3 -m venv ~/goal_jax_venv"
jax_tpu="$(quote "jax[tpu]==$(pinned_jax_version)")"
install="$venv && ~/goal_jax_venv/bin/pip install -q -U pip"
install+=" && ~/goal_jax_venv/bin/pip install -q -e ~/goal_jax $jax_tpu"
on_all_workers "$install"
mapfile -t buckets < <(gcs_buckets "${TRAIN_ARGS[@]}")
if ((${#buckets[@]})); then
  on_all_workers "$(gcs_mount_command "${buckets[@]}")"
  TRAIN_ARGS=("${TRAIN_ARGS[@]//gs:\/\//$GCS_MOUNT_ROOT/}")
fi
train="set -o pipefail; cd ~/goal_jax && ~/goal_jax_venv/bin/python -m goal_jax.train"
train+=" $(quote "${TRAIN_ARGS[@]}") 2>&1 | tee ~/goal_jax_train.log"
on_all_workers "$train"
