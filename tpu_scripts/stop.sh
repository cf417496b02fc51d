#!/usr/bin/env bash
# Stops the trainer on every host (when the slice exists), then deletes the slice whatever state it is in,
# a request still waiting in the queue included (KEEP=1: stop the run, keep the slice).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

slice_state
if slice_has_node; then
  tpu_ssh all "$(host_command stop)" || say "warning: could not stop the trainer on every host (continuing)"
else
  say "${QR_NAME}: ${STATE}; no hosts to stop a trainer on"
fi
if [[ "${KEEP:-0}" == "1" ]]; then
  exit 0
fi
if [[ "${STATE}" == "MISSING" ]]; then
  say "nothing to delete: ${QR_NAME} does not exist"
  exit 0
fi
if [[ "${QUEUED}" == "1" ]]; then
  run gcloud compute tpus queued-resources delete "${QR_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --force --quiet
else
  run gcloud compute tpus tpu-vm delete "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" --quiet
fi
