#!/bin/sh
# An item processed in steps by a shell script, for jobvisor's `exec`
# executor. A checkpoint is saved after every step, so an item that is
# paused (immediate), cancelled or interrupted by a crash resumes at the
# step it reached.
#
#   jobvisor start --name demo --executor exec --count 20 --concurrency 4 \
#     --param command=sh --param 'args=["examples/exec/steps.sh"]' \
#     --param 'env={"STEPS":"10","STEP_SECONDS":"0.5"}'
#
# Settings (environment): STEPS (default 10), STEP_SECONDS (default 0.1),
# EXEC_LOG (optional file: one line per execution "index attempt from-step").
set -eu

steps="${STEPS:-10}"
step="${JOBVISOR_CHECKPOINT:-0}"
item="$(cat)"   # the item arrives on stdin (and in $JOBVISOR_ITEM)

if [ -n "${EXEC_LOG:-}" ]; then
    echo "$JOBVISOR_ITEM_INDEX $JOBVISOR_ATTEMPT $step" >> "$EXEC_LOG"
fi
echo "processing $item from step $step (attempt $JOBVISOR_ATTEMPT)"

while [ "$step" -lt "$steps" ]; do
    sleep "${STEP_SECONDS:-0.1}"
    step=$((step + 1))
    echo "@checkpoint $step"
    echo "@progress $step/$steps"
done
echo "@result $item: $steps steps"
