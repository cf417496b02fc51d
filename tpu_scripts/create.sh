#!/usr/bin/env bash
# Creates the TPU slice: a queued resource (QUEUED=1, default) or a TPU VM directly (QUEUED=0), then waits
# (polling every POLL_SECONDS, at most WAIT_TIMEOUT s; NO_WAIT=1 returns at once) until it is ACTIVE.
# With AUTO_RESUME=1 (default for SPOT=1) it first stages the committed code in CODE_GCS and gives the slice
# a startup script (host.sh boot) that sets every host up and runs the trainer, so nothing else is needed
# and a rebooted or re-created slice resumes; extra arguments are then the trainer's config overrides.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

options=(--project="${PROJECT}" --zone="${ZONE}" --accelerator-type="${ACCELERATOR_TYPE}")
if [[ "${SPOT}" == "1" ]]; then
  options+=(--spot)
fi
if [[ -n "${SERVICE_ACCOUNT}" ]]; then
  options+=(--service-account="${SERVICE_ACCOUNT}" --scopes=https://www.googleapis.com/auth/cloud-platform)
fi

if [[ "${AUTO_RESUME}" == "1" ]]; then
  if [[ "${STAGE_CODE:-1}" == "1" ]]; then
    require_clean_tree
    archive="/tmp/${RUN_NAME}-rao_jax.tar.gz"
    run git -C "${REPO_ROOT}" archive --format=tar.gz --output="${archive}" HEAD
    run gcloud storage cp "${archive}" "${CODE_GCS}"
  fi
  startup="/tmp/${RUN_NAME}-startup.sh"
  {
    echo '#!/usr/bin/env bash'
    echo "# rao_jax startup script for ${RUN_NAME} (tpu_scripts/create.sh): set up this host, run the trainer."
    echo "export RAO_BASE=\"\${RAO_BASE:-${REMOTE_BASE}}\""
    host_settings ${ARGS[@]+"${ARGS[@]}"} | sed 's/^/export /'
    echo 'set -- boot'
    sed 1d "${REPO_ROOT}/tpu_scripts/host.sh"
  } > "${startup}"
  say "startup script: ${startup}"
  options+=(--metadata-from-file=startup-script="${startup}")
elif [[ "${#ARGS[@]}" -gt 0 ]]; then
  say "config overrides go to launch.sh (or to create.sh with AUTO_RESUME=1): ${ARGS[*]}"
  exit 2
fi

if [[ "${QUEUED}" == "1" ]]; then
  run gcloud compute tpus queued-resources create "${QR_NAME}" --node-id="${TPU_NAME}" \
    --runtime-version="${RUNTIME_VERSION}" "${options[@]}"
else
  run gcloud compute tpus tpu-vm create "${TPU_NAME}" --version="${RUNTIME_VERSION}" "${options[@]}"
fi
if [[ "${NO_WAIT}" == "1" ]]; then
  say "not waiting; follow it with: gcloud compute tpus queued-resources describe ${QR_NAME} --project=${PROJECT} --zone=${ZONE}"
  exit 0
fi
wait_until_active
if [[ "${AUTO_RESUME}" == "1" ]]; then
  say "ACTIVE: every host now installs rao_jax and starts training by itself (tpu_scripts/logs.sh --status);"
  say "for spot capacity run tpu_scripts/watch.sh to re-create the slice after a preemption"
else
  say "ACTIVE: next tpu_scripts/setup.sh, then tpu_scripts/launch.sh"
fi
