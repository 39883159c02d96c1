#!/usr/bin/env bash
# The main job: install (if needed), run the quickstart grid (SGD-PH vs SGD-M on digits,
# 2 seeds, 2 workers), then write the analysis report and print where it is.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
.venv/bin/optlab grid run experiments/quickstart.toml --workers 2
.venv/bin/optlab grid status experiments/quickstart.toml
.venv/bin/optlab report results/quickstart -o reports/quickstart
