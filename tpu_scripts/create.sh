#!/usr/bin/env bash
# Creates the TPU slice: a queued resource (QUEUED=1, default) or a TPU VM directly (QUEUED=0).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

capacity=()
if [[ "${SPOT}" == "1" ]]; then
  capacity=(--spot)
fi

if [[ "${QUEUED}" == "1" ]]; then
  run gcloud compute tpus queued-resources create "${QR_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --node-id="${TPU_NAME}" --accelerator-type="${ACCELERATOR_TYPE}" \
    --runtime-version="${RUNTIME_VERSION}" "${capacity[@]}"
  echo "queued; watch with: gcloud compute tpus queued-resources describe ${QR_NAME}" \
    "--project=${PROJECT} --zone=${ZONE}" >&2
else
  run gcloud compute tpus tpu-vm create "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" "${capacity[@]}"
fi
