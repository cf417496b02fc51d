#!/usr/bin/env bash
# Runs ON a TPU host (every worker of the slice). The other scripts call it over ssh (setup.sh, launch.sh,
# stop.sh, logs.sh) or, for AUTO_RESUME slices, as the VM's startup script (create.sh writes the settings
# in front of it), so that a rebooted or re-created slice sets itself up and resumes training.
#
#   host.sh install    a Python ${PYTHON_VERSION} virtual environment (uv) with rao_jax[tpu] from RAO_DIR
#   host.sh fetch      the starting checkpoint (and the platoon-textcraft wheel) from GCS, unless complete
#   host.sh start      stops a previous trainer and frees the TPU, then supervises a new one in the background
#   host.sh stop       SIGTERM to the trainer (it checkpoints at the next step boundary), SIGKILL after STOP_WAIT s
#   host.sh status     one line: running / exited with its code / never started, and the last error line
#   host.sh boot       the startup script's job: code from CODE_GCS, install, fetch, then supervise in the foreground
#   host.sh supervise  runs the trainer; after a preemption exit (75) runs it again (it resumes from its
#                      checkpoint) unless `stop` asked it to end; a run that exits 0 writes DONE_GCS
#
# Settings come from the environment (the callers pass them; common.sh documents them).
# Written for bash 3.2 and later.
set -euo pipefail

RAO_BASE="${RAO_BASE:-${HOME:-/root}}"
RAO_DIR="${RAO_DIR:-${RAO_BASE}/rao_jax}"
RAO_VENV="${RAO_VENV:-${RAO_BASE}/rao_venv}"
RAO_LOG="${RAO_LOG:-${RAO_BASE}/rao_train.log}"
RAO_PID="${RAO_PID:-${RAO_BASE}/rao_train.pid}"
RAO_RC="${RAO_RC:-${RAO_BASE}/rao_train.rc}"
RAO_STOP="${RAO_STOP:-${RAO_BASE}/rao_train.stop}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
UV="${UV:-${RAO_BASE}/.local/bin/uv}"
SUDO="${SUDO-sudo}"
STOP_WAIT="${STOP_WAIT:-120}"
MAX_RESTARTS="${MAX_RESTARTS:-20}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
CHECKPOINT_GCS="${CHECKPOINT_GCS:-}"
CHECKPOINT_DIR="${CHECKPOINT_DIR:-}"
PLATOON_WHEEL_GCS="${PLATOON_WHEEL_GCS:-}"
PLATOON_WHEEL="${PLATOON_WHEEL:-}"
CODE_GCS="${CODE_GCS:-}"
DONE_GCS="${DONE_GCS:-}"
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

say() { echo "[rao host $(hostname)] $*" >&2; }

install() {
  if [[ ! -x "${UV}" ]]; then
    say "installing uv into $(dirname "${UV}")"
    curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR="$(dirname "${UV}")" INSTALLER_NO_MODIFY_PATH=1 sh
  fi
  if [[ ! -x "${RAO_VENV}/bin/python" ]]; then
    say "creating ${RAO_VENV} with Python ${PYTHON_VERSION}"
    "${UV}" venv --python "${PYTHON_VERSION}" "${RAO_VENV}"
  fi
  say "installing rao_jax[tpu] from ${RAO_DIR}"
  (cd "${RAO_DIR}" && "${UV}" pip install --python "${RAO_VENV}/bin/python" -q -e '.[tpu]')
  "${RAO_VENV}/bin/python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
}

# Copies a GCS folder or file once: a marker written after a complete copy makes a re-run skip it, and
# a copy cut short (preemption, reboot) is redone.
copy_once() {
  local src="$1" dest="$2" kind="$3"
  if [[ -f "${dest}.rao_complete" ]]; then
    return 0
  fi
  say "copying ${src} to ${dest}"
  if [[ "${kind}" == "dir" ]]; then
    rm -rf "${dest}" && mkdir -p "${dest}"
    gcloud storage cp -r "${src}/*" "${dest}/"
  else
    mkdir -p "$(dirname "${dest}")"
    gcloud storage cp "${src}" "${dest}"
  fi
  touch "${dest}.rao_complete"
}

fetch() {
  if [[ -n "${CHECKPOINT_GCS}" ]]; then
    copy_once "${CHECKPOINT_GCS}" "${CHECKPOINT_DIR}" dir
  fi
  if [[ -n "${PLATOON_WHEEL_GCS}" ]]; then
    copy_once "${PLATOON_WHEEL_GCS}" "${PLATOON_WHEEL}" file
  fi
}

trainer_pid() {
  local pid=""
  if [[ -f "${RAO_PID}" ]]; then
    pid="$(cat "${RAO_PID}")"
  fi
  if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null; then
    echo "${pid}"
  fi
}

# Anything else still holding the TPU (a crashed run's children, a notebook) and libtpu's lock file.
free_tpu() {
  local devices holders
  devices="$(ls /dev/accel* /dev/vfio/[0-9]* 2>/dev/null || true)"
  if [[ -n "${devices}" ]]; then
    # shellcheck disable=SC2086
    holders="$(${SUDO} lsof -t ${devices} 2>/dev/null | sort -u | tr '\n' ' ' || true)"
    if [[ -n "${holders// /}" ]]; then
      say "freeing the TPU from process(es) ${holders}"
      # shellcheck disable=SC2086
      ${SUDO} kill -KILL ${holders} 2>/dev/null || true
      sleep 2
    fi
  fi
  if [[ -e /tmp/libtpu_lockfile ]]; then
    say "removing /tmp/libtpu_lockfile"
    ${SUDO} rm -f /tmp/libtpu_lockfile
  fi
}

stop() {
  local pid waited=0
  touch "${RAO_STOP}"
  pid="$(trainer_pid)"
  if [[ -z "${pid}" ]]; then
    say "no trainer running"
  else
    say "SIGTERM to trainer ${pid}; waiting up to ${STOP_WAIT} s for it to checkpoint and exit"
    kill -TERM "${pid}" 2>/dev/null || true
    while kill -0 "${pid}" 2>/dev/null && [[ "${waited}" -lt "${STOP_WAIT}" ]]; do
      sleep 1
      waited=$((waited + 1))
    done
    if kill -0 "${pid}" 2>/dev/null; then
      say "trainer ${pid} still running after ${STOP_WAIT} s: SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  fi
  free_tpu
}

supervise() {
  local rc=0 restarts=0 pid
  cd "${RAO_DIR}"
  while true; do
    say "starting: python -m rao_jax.train --distributed ${TRAIN_ARGS}"
    bash -c "exec ${RAO_VENV}/bin/python -m rao_jax.train --distributed ${TRAIN_ARGS}" >> "${RAO_LOG}" 2>&1 < /dev/null &
    pid=$!
    echo "${pid}" > "${RAO_PID}"
    set +e
    wait "${pid}"
    rc=$?
    set -e
    echo "${rc}" > "${RAO_RC}"
    say "trainer exited with code ${rc}"
    if [[ -f "${RAO_STOP}" || "${rc}" -ne 75 || "${restarts}" -ge "${MAX_RESTARTS}" ]]; then
      break
    fi
    restarts=$((restarts + 1))
    say "exit 75 is a preemption notice: resuming from the last checkpoint (restart ${restarts} of ${MAX_RESTARTS})"
    free_tpu
  done
  if [[ "${rc}" -eq 0 && -n "${DONE_GCS}" ]]; then
    echo "finished $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)" | gcloud storage cp - "${DONE_GCS}" || true
  fi
  return "${rc}"
}

start() {
  stop
  rm -f "${RAO_RC}" "${RAO_STOP}"
  nohup bash "${SELF}" supervise >> "${RAO_LOG}" 2>&1 < /dev/null &
  local waited=0
  while [[ -z "$(trainer_pid)" && ! -f "${RAO_RC}" && "${waited}" -lt 30 ]]; do
    sleep 1
    waited=$((waited + 1))
  done
  status
}

status() {
  local pid last
  pid="$(trainer_pid)"
  last="$(grep -E 'Traceback|Error|error:|preempted' "${RAO_LOG}" 2>/dev/null | tail -n 1 || true)"
  if [[ -n "${pid}" ]]; then
    echo "$(hostname): running (pid ${pid})${last:+; last error line: ${last}}"
  elif [[ -f "${RAO_RC}" ]]; then
    echo "$(hostname): exited with code $(cat "${RAO_RC}")${last:+; last error line: ${last}}"
  else
    echo "$(hostname): no trainer started"
  fi
}

boot() {
  mkdir -p "${RAO_BASE}"
  if [[ -n "${DONE_GCS}" ]] && gcloud storage ls "${DONE_GCS}" > /dev/null 2>&1; then
    say "${DONE_GCS} exists: the run has finished, nothing to do"
    return 0
  fi
  say "fetching the code from ${CODE_GCS}"
  gcloud storage cp "${CODE_GCS}" "${RAO_BASE}/rao_jax.tar.gz"
  rm -rf "${RAO_DIR}" && mkdir -p "${RAO_DIR}"
  tar -xzf "${RAO_BASE}/rao_jax.tar.gz" -C "${RAO_DIR}"
  install
  fetch
  free_tpu
  rm -f "${RAO_STOP}"
  supervise
}

case "${1:-}" in
  install) install ;;
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  boot) boot ;;
  supervise) supervise ;;
  *) echo "usage: host.sh install|fetch|start|stop|status|boot|supervise" >&2; exit 2 ;;
esac
