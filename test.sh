#!/usr/bin/env bash
# The test command: install (if needed), then the full test suite on 2 cores
# (the default run, then the long checks marked `slow`).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
.venv/bin/python -m pytest -n 2 -q -m "not slow" "$@"
.venv/bin/python -m pytest -n 2 -q -m slow "$@"
