# shellcheck shell=bash
# Helpers shared by launch/*.sh (sourced, not run): option parsing, quoting, dry runs.

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$LAUNCH_DIR")"
DRY_RUN=0

die() {
  echo "error: $*" >&2
  exit 2
}

# The command line of the arguments, quoted so that bash reads back exactly the same words
# (single quotes only where a word needs them, so dry runs stay readable).
quote() {
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# Runs a command, echoing it to stderr; with --dry_run only prints it to stdout.
run() {
  if ((DRY_RUN)); then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

# Parses the script's options into variables of their names, the words after `--` into
# TRAIN_ARGS (required). $1 names the options: `key=` takes `--key=value`, a bare `key` is the
# flag `--key` (sets key=1). Every script also takes --dry_run and --help. Defaults are set
# before the call.
# shellcheck disable=SC2034  # TRAIN_ARGS is read by the sourcing script.
parse_options() {
  local known=" $1 " arg key
  shift
  TRAIN_ARGS=()
  while (($#)); do
    arg="$1"
    shift
    case "$arg" in
      --dry_run) DRY_RUN=1 ;;
      -h | --help) usage_from_header "$0"; exit 0 ;;
      --) TRAIN_ARGS=("$@"); break ;;
      --?*=*) key="${arg%%=*}" && key="${key#--}" && [[ "$known" == *" $key= "* ]] ||
                die "unknown option $arg (options are --key=value; training arguments follow --)"
              printf -v "$key" '%s' "${arg#*=}" ;;
      --?*) key="${arg#--}" && [[ "$known" == *" $key "* ]] ||
              die "unknown option $arg (options are --key=value; training arguments follow --)"
            printf -v "$key" '%s' 1 ;;
      *) die "unknown option $arg (options are --key=value; training arguments follow --)" ;;
    esac
  done
  ((${#TRAIN_ARGS[@]})) || die "no training arguments after -- (at least --config and --workdir)"
}

# Checks --attention's value against $2 (default "cudnn xla") and appends it to TRAIN_ARGS as
# --config.model.attention, unless the user gave that override (overrides must follow --config,
# so it goes last).
add_attention_override() {
  local allowed=" ${2:-cudnn xla} "
  [[ "$allowed" == *" $1 "* ]] || die "--attention must be one of:${allowed% }"
  [[ -n "$(train_arg --config.model.attention "${TRAIN_ARGS[@]}")" ]] ||
    TRAIN_ARGS+=(--config.model.attention="$1")
}

# Makes the config file of `--config=FILE[:ARGS]` absolute: a relative FILE is the user's own when
# it exists from here, else this checkout's (configs/goal.py). The scripts do not cd into the
# checkout, so every other relative path (workdir, data, init) means what it says where the user
# typed it; PYTHONPATH (see checkout_pythonpath) finds this checkout's goal_jax.
resolve_config_path() {
  local i spec file
  for i in "${!TRAIN_ARGS[@]}"; do
    [[ "${TRAIN_ARGS[$i]}" == --config=* ]] || continue
    spec="${TRAIN_ARGS[$i]#--config=}"
    file="${spec%%:*}"
    if [[ "$file" != /* && ! -e "$file" && -e "$REPO_ROOT/$file" ]]; then
      TRAIN_ARGS[i]="--config=$REPO_ROOT/$spec"
    fi
  done
}

# PYTHONPATH with this checkout first, so `python -m goal_jax.train` runs it from any directory.
checkout_pythonpath() {
  echo "$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

# The jax version setup.cfg pins (jax[tpu] / jax[cuda12] must match it).
pinned_jax_version() {
  sed -n 's/^ *jax==\([0-9.]*\)$/\1/p' "$REPO_ROOT/setup.cfg"
}

# Warns when a path that every host must share is not on GCS.
warn_unless_gcs() {
  local name="$1" value="$2"
  if [[ -n "$value" && "$value" != gs://* && "$value" != "$GCS_MOUNT_ROOT"/* ]]; then
    echo "warning: $name=$value is not on GCS (gs://...): every worker must see the same files" >&2
  fi
}

# Where a bucket is mounted with gcsfuse on every worker (goal_jax/files.py GCS_MOUNT_ROOT):
# goal_jax reads and writes through the local file system, and refuses gs:// URLs.
GCS_MOUNT_ROOT=/mnt/gcs

# The buckets that the gs:// paths of the arguments name, once each, in order.
gcs_buckets() {
  local arg rest bucket seen=" "
  for arg in "$@"; do
    rest="$arg"
    while [[ "$rest" =~ gs://([a-z0-9][-a-z0-9_.]*) ]]; do
      bucket="${BASH_REMATCH[1]}"
      rest="${rest#*gs://"$bucket"}"
      [[ "$seen" == *" $bucket "* ]] && continue
      seen+="$bucket "
      echo "$bucket"
    done
  done
}

# A worker's command that installs gcsfuse (Google's apt repository) unless present and mounts
# each bucket at $GCS_MOUNT_ROOT/<bucket>, unless mounted. Directory renames (Orbax commits a
# checkpoint by renaming its temporary folder) need --rename-dir-limit on flat buckets.
gcs_mount_command() {
  local command bucket mounted
  command='command -v gcsfuse >/dev/null || { echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc]'
  # shellcheck disable=SC2016  # $(lsb_release ...) expands on the worker
  command+=' https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main"'
  command+=' | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null'
  command+=' && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg'
  command+=' | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null'
  command+=' && sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse; }'
  for bucket in "$@"; do
    mounted="$GCS_MOUNT_ROOT/$bucket"
    command+=" && sudo mkdir -p $mounted && sudo chown \"\$USER\" $mounted && { mountpoint -q"
    command+=" $mounted || gcsfuse --implicit-dirs --rename-dir-limit=200000 $bucket $mounted; }"
  done
  echo "$command"
}

# The value of `--flag=...` among the training arguments, empty if absent.
train_arg() {
  local flag="$1" arg
  shift
  for arg in "$@"; do
    if [[ "$arg" == "$flag="* ]]; then
      echo "${arg#*=}"
    fi
  done
}

# XLA flags for GPUs (MaxText's GPU configs, https://github.com/AI-Hypercomputer/maxtext): the latency-hiding
# scheduler overlaps collectives with compute (matters with several GPUs); cuBLAS over Triton
# GEMMs. Any flags already in $XLA_FLAGS and the arguments come after, so they win.
gpu_xla_flags() {
  local flags=(--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false)
  local extra
  for extra in "${XLA_FLAGS:-}" "$@"; do
    [[ -z "$extra" ]] || flags+=("$extra")
  done
  echo "${flags[*]}"
}

# Prints a script's header comment (after the shebang, up to the first blank line).
usage_from_header() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "$1"
}
