#!/usr/bin/env bash
# Stops the trainer on every host, then deletes the slice (KEEP=1 stops the run but keeps the slice).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

tpu_ssh all "if [ -f \$HOME/${REMOTE_PID} ]; then kill \$(cat \$HOME/${REMOTE_PID}) || true; rm -f \$HOME/${REMOTE_PID}; fi"
if [[ "${KEEP:-0}" == "1" ]]; then
  exit 0
fi
if [[ "${QUEUED}" == "1" ]]; then
  run gcloud compute tpus queued-resources delete "${QR_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --force --quiet
else
  run gcloud compute tpus tpu-vm delete "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" --quiet
fi
