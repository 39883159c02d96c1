#!/usr/bin/env bash
# The documentation site (mkdocs.yml), built with warnings as errors: a broken link, anchor or API
# reference fails CI. Installs the `docs` extra into the project's .venv (pulls no torch).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q -c constraints.txt -e ".[docs]" 2>&1 | grep -v "^WARNING: Location" || true
if .venv/bin/python -m pip list 2>/dev/null | grep -i nvidia; then
  echo "error: a CUDA (nvidia-*) package was installed" >&2
  exit 1
fi
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --site-dir "${1:-site}"
