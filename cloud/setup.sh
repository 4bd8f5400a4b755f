#!/usr/bin/env bash
# Node setup for a cloud run (SkyPilot's `setup:`, or by hand on a rented GPU node), idempotent:
#   the conda environment of environment.yml (CUDA torch, the locked pins), the project in it (`make setup`),
#   the DVC remote (`make remote`, DVC_REMOTE / DVC_REMOTE_ENDPOINT), and `dvc pull` of what the remote already
#   holds (nothing on a first run: --allow-missing).
# LMREPRO_DRY_RUN=1 prints each command instead of running it (tests/test_cloud_launch.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. cloud/common.sh

require_remote
if have conda && conda env list | grep -q '^lmrepro '; then
  step conda env update --quiet -n lmrepro -f environment.yml
else
  step conda env create --quiet -f environment.yml
fi
# `conda run` sets CONDA_DEFAULT_ENV=lmrepro: the Makefile then installs into that environment, never a CPU .venv.
in_env make setup
in_env make remote URL="$DVC_REMOTE" ENDPOINT="${DVC_REMOTE_ENDPOINT:-}"
in_env dvc pull --allow-missing
