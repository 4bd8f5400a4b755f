# Shared by cloud/setup.sh and cloud/run.sh (sourced).
die() { echo "error: $*" >&2; exit 2; }
have() { command -v "$1" >/dev/null 2>&1; }
# A command, or with LMREPRO_DRY_RUN=1 its text (one line, "+ " and the words as the shell would quote them).
step() {
  if [ "${LMREPRO_DRY_RUN:-0}" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
# Inside the project's conda environment, output streamed as it comes.
in_env() { step conda run --no-capture-output -n lmrepro "$@"; }
require_remote() {
  [ -n "${DVC_REMOTE:-}" ] || die "set DVC_REMOTE (s3://bucket/path, gs://…, azure://…, ssh://…): the run's results and checkpoints go there"
}
