#!/usr/bin/env bash
# Starts `python -m rao_jax.train --config CONFIG` on every host (--worker=all) in the background; the
# trainer is started with --distributed, so it calls jax.distributed.initialize() before anything else.
# Extra arguments are passed on as config overrides, e.g. ./launch.sh --config.train.steps=50
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common_args "$@"

overrides=""
for arg in "${ARGS[@]+"${ARGS[@]}"}"; do
  overrides+=" $(printf '%q' "${arg}")"
done

data=""
if needs_platoon_wheel; then
  data=" --config.data.knobs.wheel=${PLATOON_WHEEL}"
fi

train="\$HOME/${REMOTE_VENV}/bin/python -m rao_jax.train --distributed --config ${CONFIG} --config.workdir=${WORKDIR} \
--config.model.init_checkpoint=${CHECKPOINT_DIR} --config.tokenizer.path=${CHECKPOINT_DIR}${data}${overrides}"
tpu_ssh all "cd ${REMOTE_DIR} || exit 1; nohup ${train} > \$HOME/${REMOTE_LOG} 2>&1 < /dev/null & echo \$! > \$HOME/${REMOTE_PID}"
