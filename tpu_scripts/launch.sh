#!/usr/bin/env bash
# Starts `python -m rao_jax.train --distributed --config CONFIG` on every host (--worker=all) in the
# background (host.sh start: stops a previous trainer, waits for it, frees the TPU and its lock file
# first); the trainer calls jax.distributed.initialize() before anything else, and after a preemption
# exit (75) is started again and resumes. Extra arguments are config overrides, e.g.
# ./launch.sh --config.train.steps=50
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

tpu_ssh all "$(host_command start ${ARGS[@]+"${ARGS[@]}"})"
