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
# The VM's service account (needs read/write on GCS_BUCKET); empty: the project's default compute account.
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"
# The TPU images ship Python 3.10; setup installs this version with uv into the hosts' virtual environment.
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"

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

# 1: the slice sets itself up and runs the trainer from its startup script (create.sh stages the code in
# CODE_GCS), so a rebooted slice resumes, and watch.sh re-creates a preempted one. Default: on for spot.
AUTO_RESUME="${AUTO_RESUME:-${SPOT}}"
CODE_GCS="${CODE_GCS:-${WORKDIR}/code/rao_jax.tar.gz}"
# Written by the hosts when the trainer exits 0: watch.sh then deletes the slice and stops.
DONE_GCS="${DONE_GCS:-${WORKDIR}/DONE}"
# create.sh waits up to WAIT_TIMEOUT seconds for the queued resource to become ACTIVE, polling every
# POLL_SECONDS (NO_WAIT=1: return at once).
WAIT_TIMEOUT="${WAIT_TIMEOUT:-86400}"
POLL_SECONDS="${POLL_SECONDS:-60}"
NO_WAIT="${NO_WAIT:-0}"

# On the TPU hosts: where host.sh keeps the code, the virtual environment, the log and the pid (under
# the ssh user's home; under /opt/rao, as root, for AUTO_RESUME slices, whose startup script runs as root).
if [[ "${AUTO_RESUME}" == "1" ]]; then
  REMOTE_BASE="${REMOTE_BASE:-/opt/rao}"
  REMOTE_SUDO="sudo "
else
  REMOTE_BASE="${REMOTE_BASE:-\$HOME}"
  REMOTE_SUDO=""
fi

DRY_RUN="${DRY_RUN:-0}"
# The state a dry run pretends every queued resource / node is in.
DRY_RUN_STATE="${DRY_RUN_STATE:-ACTIVE}"
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

say() {
  echo "$*" >&2
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

# `git archive HEAD` ships committed files only: refuse a tree with uncommitted changes to tracked files
# (ALLOW_DIRTY=1 ships HEAD anyway; a dry run only warns).
require_clean_tree() {
  local dirty
  dirty="$(git -C "${REPO_ROOT}" status --porcelain --untracked-files=no 2>/dev/null || true)"
  if [[ -z "${dirty}" ]]; then
    return 0
  fi
  if [[ "${ALLOW_DIRTY:-0}" == "1" || "${DRY_RUN}" == "1" ]]; then
    say "warning: uncommitted changes are NOT shipped (git archive HEAD):"
    say "${dirty}"
    return 0
  fi
  say "uncommitted changes to tracked files would be left behind (the hosts get git archive HEAD):"
  say "${dirty}"
  say "commit them, or set ALLOW_DIRTY=1 to ship HEAD as it is"
  exit 2
}

# The trainer's arguments (after `python -m rao_jax.train --distributed`), then any extra overrides.
train_args() {
  local line
  line="--config $(shell_quote "${CONFIG}") --config.workdir=$(shell_quote "${WORKDIR}")"
  line+=" --config.model.init_checkpoint=$(shell_quote "${CHECKPOINT_DIR}")"
  line+=" --config.tokenizer.path=$(shell_quote "${CHECKPOINT_DIR}")"
  if needs_platoon_wheel; then
    line+=" --config.data.knobs.wheel=$(shell_quote "${PLATOON_WHEEL}")"
  fi
  local arg
  for arg in "$@"; do
    line+=" $(shell_quote "${arg}")"
  done
  printf '%s' "${line}"
}

# NAME=value lines of the settings host.sh reads (overrides: the trainer's extra arguments).
host_settings() {
  local wheel_gcs="" wheel=""
  if needs_platoon_wheel; then
    wheel_gcs="${PLATOON_WHEEL_GCS}"
    wheel="${PLATOON_WHEEL}"
  fi
  printf '%s=%s\n' \
    PYTHON_VERSION "$(shell_quote "${PYTHON_VERSION}")" \
    CHECKPOINT_GCS "$(shell_quote "${CHECKPOINT_GCS}")" \
    CHECKPOINT_DIR "$(shell_quote "${CHECKPOINT_DIR}")" \
    PLATOON_WHEEL_GCS "$(shell_quote "${wheel_gcs}")" \
    PLATOON_WHEEL "$(shell_quote "${wheel}")" \
    CODE_GCS "$(shell_quote "${CODE_GCS}")" \
    DONE_GCS "$(shell_quote "${DONE_GCS}")" \
    TRAIN_ARGS "$(shell_quote "$(train_args "$@")")"
}

# The remote command running `host.sh ACTION` with the settings (on every host: tpu_ssh all ...).
host_command() {
  local action="$1"
  shift
  local settings
  settings="$(host_settings "$@" | tr '\n' ' ')"
  printf '%s' "${REMOTE_SUDO}env RAO_BASE=${REMOTE_BASE} ${settings}bash ${REMOTE_BASE}/rao_jax/tpu_scripts/host.sh ${action}"
}

# Sets STATE to the queued resource's state (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, FAILED, ...), or
# MISSING when it does not exist (with QUEUED=0: the TPU VM's state, READY, PREEMPTED, ..., or MISSING).
# A dry run prints the query and pretends DRY_RUN_STATE.
STATE=""
slice_state() {
  local out rc
  local query=(gcloud compute tpus queued-resources describe "${QR_NAME}" --project="${PROJECT}" --zone="${ZONE}"
               --format=value\(state.state\))
  if [[ "${QUEUED}" != "1" ]]; then
    query=(gcloud compute tpus tpu-vm describe "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}"
           --format=value\(state\))
  fi
  if [[ "${DRY_RUN}" == "1" ]]; then
    run "${query[@]}"
    STATE="${DRY_RUN_STATE}"
    return 0
  fi
  set +e
  out="$("${query[@]}" 2>&1)"
  rc=$?
  set -e
  if [[ "${rc}" -eq 0 && -n "${out}" ]]; then
    STATE="$(printf '%s' "${out}" | tail -n 1)"
  elif printf '%s' "${out}" | grep -q -i -E 'NOT_FOUND|not found'; then
    STATE="MISSING"
  else
    say "cannot read the state of ${QR_NAME}: ${out}"
    exit 1
  fi
}

# Whether the slice's VMs exist (ssh can reach them).
slice_has_node() {
  case "${STATE}" in
    ACTIVE | READY) return 0 ;;
    *) return 1 ;;
  esac
}

# Polls until the slice is usable; fails on FAILED / SUSPENDED / MISSING or after WAIT_TIMEOUT seconds.
wait_until_active() {
  local waited=0
  while true; do
    slice_state
    say "$(date -u +%H:%M:%S) ${QR_NAME}: ${STATE} (${waited} s)"
    case "${STATE}" in
      ACTIVE | READY) return 0 ;;
      FAILED | SUSPENDED | SUSPENDING | MISSING | PREEMPTED | TERMINATED)
        say "${QR_NAME} is ${STATE}: it will not become ACTIVE (see gcloud compute tpus queued-resources describe)"
        return 1 ;;
    esac
    if [[ "${waited}" -ge "${WAIT_TIMEOUT}" ]]; then
      say "${QR_NAME} is still ${STATE} after ${WAIT_TIMEOUT} s; the request stays queued (stop.sh deletes it)"
      return 1
    fi
    sleep "${POLL_SECONDS}"
    waited=$((waited + (POLL_SECONDS > 0 ? POLL_SECONDS : 1)))
  done
}
