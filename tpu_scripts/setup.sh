#!/usr/bin/env bash
# Installs rao_jax on every host of the slice: ships the committed tree (git archive HEAD; refuses
# uncommitted changes to tracked files unless ALLOW_DIRTY=1), then host.sh install (Python PYTHON_VERSION
# with uv, a virtual environment, pip install -e '.[tpu]') and host.sh fetch (the starting checkpoint from
# GCS, and the authors' platoon-textcraft wheel when the config trains on their task files).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

if [[ "${AUTO_RESUME}" == "1" ]]; then
  say "AUTO_RESUME=1: the slice's startup script sets up every host (create.sh staged the code); nothing to do."
  say "To ship new code: commit, then stop.sh and create.sh again."
  exit 0
fi
require_clean_tree
archive="/tmp/${RUN_NAME}-rao_jax.tar.gz"
run git -C "${REPO_ROOT}" archive --format=tar.gz --output="${archive}" HEAD
run gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:rao_jax.tar.gz" --project="${PROJECT}" \
  --zone="${ZONE}" --worker=all
tpu_ssh all "set -e; rm -rf ${REMOTE_BASE}/rao_jax && mkdir -p ${REMOTE_BASE}/rao_jax \
&& tar -xzf rao_jax.tar.gz -C ${REMOTE_BASE}/rao_jax && $(host_command install) && $(host_command fetch)"
