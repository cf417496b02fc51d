#!/usr/bin/env bash
# Follows the trainer's log on every host, each line prefixed with its host name (WORKER=N: one host), or
# with --status prints one line per host: running, or exited with its code, and the last error line.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

worker="${WORKER:-all}"
if [[ " ${ARGS[*]-} " == *" --status "* ]]; then
  tpu_ssh "${worker}" "$(host_command status)"
else
  tpu_ssh "${worker}" "${REMOTE_SUDO}tail -n ${LINES_SHOWN:-100} -F ${REMOTE_BASE}/rao_train.log | sed -u \"s/^/[\$(hostname)] /\""
fi
