#!/usr/bin/env bash
# Shared settings of the tpu_scripts; source it, do not run it. Every value can be set in the
# environment (PROJECT=my-proj ZONE=us-east5-a ./create.sh). Pass --dry-run (or DRY_RUN=1) to any
# script to print the exact gcloud commands instead of running them.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The trainer config, `file.py` or `file.py:arg` (get_config(arg), e.g. configs/qwen3_4b_v5p.py:hard);
# its slice (`config.slice = "..."` or `slice_name="..."` of qwen3_pod_config) picks the accelerator
# unless ACCELERATOR_TYPE is set.
CONFIG="${CONFIG:-configs/qwen3_4b_v5p.py}"
CONFIG_FILE="${CONFIG%%:*}"
CONFIG_ARG="${CONFIG#"${CONFIG_FILE}"}"
CONFIG_ARG="${CONFIG_ARG#:}"
if [[ ! -f "${REPO_ROOT}/${CONFIG_FILE}" ]]; then
  echo "CONFIG=${CONFIG}: no file ${CONFIG_FILE} in ${REPO_ROOT}" >&2
  exit 2
fi
config_slice() {
  sed -n -e 's/^[[:space:]]*config\.slice = "\([^"]*\)".*/\1/p' \
    -e 's/.*slice_name="\([^"]*\)".*/\1/p' "${REPO_ROOT}/${CONFIG_FILE}" | head -n 1
}
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-$(config_slice)}"
if [[ -z "${ACCELERATOR_TYPE}" ]]; then
  echo "ACCELERATOR_TYPE is not set and ${CONFIG} names no config.slice" >&2
  exit 2
fi

PROJECT="${PROJECT:-my-gcp-project}"
case "${ACCELERATOR_TYPE}" in
  v6e-*) DEFAULT_ZONE="us-east5-b" ;;
  *) DEFAULT_ZONE="us-east5-a" ;;
esac
ZONE="${ZONE:-${DEFAULT_ZONE}}"
TPU_NAME="${TPU_NAME:-rao-${ACCELERATOR_TYPE}}"
# 1: ask for the slice through a queued resource (waits for capacity); 0: create the TPU VM directly.
QUEUED="${QUEUED:-1}"
QR_NAME="${QR_NAME:-${TPU_NAME}-qr}"
# 1: spot capacity (cheaper, preemptible); 0: on demand.
SPOT="${SPOT:-0}"
case "${ACCELERATOR_TYPE}" in
  v5p-*) DEFAULT_RUNTIME="v2-alpha-tpuv5" ;;
  v6e-*) DEFAULT_RUNTIME="v2-alpha-tpuv6e" ;;
  *) DEFAULT_RUNTIME="tpu-ubuntu2204-base" ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-${DEFAULT_RUNTIME}}"

# GCS: the run's workdir (checkpoints, data, metrics; every host writes its shards there) and the
# Hugging Face checkpoint to start from, copied to CHECKPOINT_DIR on every host by setup.sh.
GCS_BUCKET="${GCS_BUCKET:-gs://my-rao-bucket}"
RUN_NAME="${RUN_NAME:-$(basename "${CONFIG_FILE}" .py)${CONFIG_ARG:+_${CONFIG_ARG}}}"
WORKDIR="${WORKDIR:-${GCS_BUCKET}/rao/runs/${RUN_NAME}}"
case "${CONFIG}" in
  *30b_a3b*) DEFAULT_MODEL="Qwen3-30B-A3B" ;;
  *) DEFAULT_MODEL="Qwen3-4B-Instruct-2507" ;;
esac
CHECKPOINT_GCS="${CHECKPOINT_GCS:-${GCS_BUCKET}/models/${DEFAULT_MODEL}}"
CHECKPOINT_DIR="${CHECKPOINT_DIR:-/tmp/rao/models/$(basename "${CHECKPOINT_GCS}")}"

# The authors' task files (the `platoon-textcraft` wheel, from `pip download --no-deps platoon-textcraft`)
# for configs that train on them (data family textcraft_official or textcraft_minecraft): setup.sh
# copies the wheel from PLATOON_WHEEL_GCS to PLATOON_WHEEL on every host, launch.sh passes
# --config.data.knobs.wheel=PLATOON_WHEEL.
PLATOON_WHEEL_GCS="${PLATOON_WHEEL_GCS:-${GCS_BUCKET}/data/platoon_textcraft-0.3.0-py3-none-any.whl}"
PLATOON_WHEEL="${PLATOON_WHEEL:-/tmp/rao/data/$(basename "${PLATOON_WHEEL_GCS}")}"
needs_platoon_wheel() {
  grep -q -E 'textcraft_official|textcraft_minecraft' "${REPO_ROOT}/${CONFIG_FILE}"
}

# On the TPU hosts.
REMOTE_DIR="${REMOTE_DIR:-rao_jax}"
REMOTE_VENV="${REMOTE_VENV:-rao_venv}"
REMOTE_LOG="${REMOTE_LOG:-rao_train.log}"
REMOTE_PID="${REMOTE_PID:-rao_train.pid}"

DRY_RUN="${DRY_RUN:-0}"
# Remaining arguments after the common flags (scripts that take extra arguments read ARGS).
ARGS=()

parse_common_args() {
  local arg
  for arg in "$@"; do
    case "${arg}" in
      --dry-run) DRY_RUN=1 ;;
      *) ARGS+=("${arg}") ;;
    esac
  done
}

# One argument as the shell reads it back: bare when safe, else in single quotes.
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs a command, or prints it (one line, quoted so that it can be pasted) under DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    local arg line=""
    for arg in "$@"; do
      line+="${line:+ }$(shell_quote "${arg}")"
    done
    printf '%s\n' "${line}"
  else
    "$@"
  fi
}

tpu_ssh() {
  local worker="$1" command="$2"
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --worker="${worker}" --command="${command}"
}
