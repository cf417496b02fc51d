#!/usr/bin/env bash
# Follows the trainer's log on one host (WORKER=0 by default: the host that prints metrics).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

tpu_ssh "${WORKER:-0}" "tail -n ${LINES_SHOWN:-200} -F \$HOME/${REMOTE_LOG}"
