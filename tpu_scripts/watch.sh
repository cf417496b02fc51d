#!/usr/bin/env bash
# Keeps an AUTO_RESUME slice alive (run it in tmux or on a small VM): every POLL_SECONDS it reads the queued
# resource's state; a preempted, failed or vanished slice is deleted and created again (create.sh with
# the code already staged), and its startup script resumes the run from the last checkpoint in WORKDIR.
# When the run has finished (DONE_GCS exists) it deletes the slice (KEEP=1: keeps it) and exits.
# WATCH_ROUNDS=N stops after N polls (0: never). Extra arguments: the config overrides given to create.sh.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

if [[ "${AUTO_RESUME}" != "1" || "${QUEUED}" != "1" ]]; then
  say "watch.sh re-creates queued resources whose startup script runs the job: set QUEUED=1 and AUTO_RESUME=1"
  exit 2
fi
here="$(dirname "${BASH_SOURCE[0]}")"
rounds=0
recreated=0
while true; do
  if [[ "${DRY_RUN}" == "1" ]]; then
    run gcloud storage ls "${DONE_GCS}"
  elif gcloud storage ls "${DONE_GCS}" > /dev/null 2>&1; then
    say "$(date -u +%H:%M:%S) the run has finished (${DONE_GCS})"
    if [[ "${KEEP:-0}" != "1" ]]; then
      DRY_RUN="${DRY_RUN}" bash "${here}/stop.sh"
    fi
    exit 0
  fi
  slice_state
  say "$(date -u +%H:%M:%S) ${QR_NAME}: ${STATE} (re-created ${recreated} times)"
  case "${STATE}" in
    SUSPENDING | SUSPENDED | FAILED | MISSING)
      if [[ "${STATE}" != "MISSING" ]]; then
        run gcloud compute tpus queued-resources delete "${QR_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
          --force --quiet
      fi
      DRY_RUN="${DRY_RUN}" STAGE_CODE=0 NO_WAIT=1 bash "${here}/create.sh" ${ARGS[@]+"${ARGS[@]}"}
      recreated=$((recreated + 1)) ;;
  esac
  rounds=$((rounds + 1))
  if [[ "${WATCH_ROUNDS:-0}" -gt 0 && "${rounds}" -ge "${WATCH_ROUNDS:-0}" ]]; then
    exit 0
  fi
  sleep "${POLL_SECONDS}"
done
