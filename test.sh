#!/usr/bin/env bash
# The test command: install (if needed), then the test suite on 2 cores (the default run),
# then the long checks marked `slow` (kill -9 resume, installing the example plugin) serially.
set -euo pipefail
cd "$(dirname "$0")"
OPTLAB_EXTRAS=test,baselines,lightning,hf,ray,slurm,optuna,tracking ./setup.sh
export OPTLAB_NO_PROGRESS=1
.venv/bin/python -m pytest -n 2 -q -m "not slow" "$@"
.venv/bin/python -m pytest -q -m slow "$@"
