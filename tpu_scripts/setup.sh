#!/usr/bin/env bash
# Installs rao_jax on every host of the slice: ships the committed tree (git archive HEAD), makes a
# virtual environment, pip install -e '.[tpu]', and copies the starting checkpoint from GCS (and the
# authors' task files, the platoon-textcraft wheel, when the config trains on them).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

archive="/tmp/${RUN_NAME}-rao_jax.tar.gz"
run git -C "${REPO_ROOT}" archive --format=tar.gz --output="${archive}" HEAD
run gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:rao_jax.tar.gz" --project="${PROJECT}" \
  --zone="${ZONE}" --worker=all
tpu_ssh all "set -e; rm -rf ${REMOTE_DIR} && mkdir -p ${REMOTE_DIR} && tar -xzf rao_jax.tar.gz -C ${REMOTE_DIR} \
&& python3 -m venv ${REMOTE_VENV} && ${REMOTE_VENV}/bin/pip install -q --upgrade pip \
&& cd ${REMOTE_DIR} && \$HOME/${REMOTE_VENV}/bin/pip install -q -e '.[tpu]' \
&& mkdir -p ${CHECKPOINT_DIR} && gcloud storage cp -r '${CHECKPOINT_GCS}/*' ${CHECKPOINT_DIR}/"
if needs_platoon_wheel; then
  tpu_ssh all "set -e; mkdir -p $(dirname "${PLATOON_WHEEL}") && gcloud storage cp '${PLATOON_WHEEL_GCS}' ${PLATOON_WHEEL}"
fi
