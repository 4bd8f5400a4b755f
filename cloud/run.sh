#!/usr/bin/env bash
# One paper (or all) at one profile on a cloud node (SkyPilot's `run:`), after cloud/setup.sh:
#   runs it as a DVC experiment outside the workspace (`dvc exp run --temp`), named <profile>-<paper>-<UTC time>;
#   resumable checkpoints are mirrored to the DVC remote while it trains (a preempted node's run resumes on the
#   next one: `sky jobs launch` restarts this script); at the end `dvc exp push` sends the experiment's git ref
#   to GIT_REMOTE (default origin) and its artifacts to the DVC remote (on several nodes, from node 0).
# PAPER: foundation | hybrid_attention | xformer | lora_alpha | all.  PROFILE: smoke | laptop | mid | paper.
# LMREPRO_DRY_RUN=1 prints each command instead of running it (tests/test_cloud_launch.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. cloud/common.sh

require_remote
case "${PROFILE:-}" in smoke|laptop|mid|paper) ;; *) die "PROFILE must be one of smoke, laptop, mid, paper (got '${PROFILE:-}')";; esac
case "${PAPER:-}" in
  all) target=() ;;
  foundation) target=(foundation-report) ;;
  hybrid_attention|xformer|lora_alpha) target=("pipelines/$PAPER/dvc.yaml") ;;
  *) die "PAPER must be one of foundation, hybrid_attention, xformer, lora_alpha, all (got '${PAPER:-}')" ;;
esac
git rev-parse --verify -q HEAD >/dev/null || die "$(pwd) is not a git checkout with a commit: DVC experiments need one"
name="$PROFILE-$PAPER-$(date -u +%Y%m%d-%H%M%S)"
export LMREPRO_CHECKPOINT_MIRROR="${LMREPRO_CHECKPOINT_MIRROR:-dvc}"
# `--temp` deletes its copy when the run stops: checkpoints stay in this checkout (a restarted job resumes locally
# when it lands on the same node, from the mirror otherwise).
export LMREPRO_CHECKPOINT_ROOT="${LMREPRO_CHECKPOINT_ROOT:-$(pwd)/data/checkpoints}"
in_env dvc exp run --temp --name "$name" -S "profile=$PROFILE" ${target[@]+"${target[@]}"}
# Several nodes (cloud/sky/nodes.yaml): every node trains and holds the results; node 0 alone pushes them.
# The rank as lmrepro.launch reads it: LMREPRO_MACHINE_RANK first, then SkyPilot's.
if [ "${LMREPRO_MACHINE_RANK:-${SKYPILOT_NODE_RANK:-0}}" = 0 ]; then
  in_env dvc exp push "${GIT_REMOTE:-origin}" "$name"
fi
