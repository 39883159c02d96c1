#!/usr/bin/env bash
# Create .venv (if missing) and install optlab with CPU-only torch (pinned in constraints.txt).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, from the pinned CPU wheel: nothing later may replace it with a CUDA build.
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
# OPTLAB_EXTRAS: which optional extras to install (test.sh asks for all of them so CI runs every test;
# the main job needs only the default install plus the pytorch_optimizer baselines).
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${OPTLAB_EXTRAS:-baselines}]" 2>&1 | grep -v "^WARNING: Location" || true
if .venv/bin/python -m pip list 2>/dev/null | grep -qi nvidia; then
  echo "error: a CUDA (nvidia-*) package was installed; check constraints.txt" >&2
  exit 1
fi
.venv/bin/python -c "import torch, optlab; assert torch.__version__.startswith('2.13.0'), torch.__version__"
