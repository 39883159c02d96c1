#!/usr/bin/env bash
# Tested dependency floors (issue 23): a separate venv (.venv-min) with the LOWEST versions that
# pyproject.toml declares for the core dependencies AND for the optional extras the default suite
# exercises (constraints-min.txt; torch kept at the CPU pin; the test extra's tools unpinned), optlab
# installed from the checkout, then the whole default test suite (`-m "not slow"`).
# Usage: .ci/min_versions.sh [pytest args...]   (e.g. tests/test_stats.py to run a subset)
# OPTLAB_MIN_WORKERS: pytest-xdist workers (default 2).
set -euo pipefail
# pip's output without the index's "Location ... ignored" noise; pip's exit status kept
quiet() { local rc=0 log; log=$(mktemp); "$@" >"$log" 2>&1 || rc=$?; grep -v "^WARNING: Location" "$log" || true; rm -f "$log"; return $rc; }
cd "$(dirname "$0")/.."
VENV=${OPTLAB_MIN_VENV:-.venv-min}
# the extras test.sh installs (the default suite needs no docs/vision extra)
EXTRAS=baselines,lightning,hf,ray,slurm,optuna,tracking
export PIP_DISABLE_PIP_VERSION_CHECK=1 OPTLAB_NO_PROGRESS=1 OPTLAB_MIN_EXTRAS=$EXTRAS
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
quiet "$VENV/bin/python" -m pip install -q -c constraints-min.txt "torch==2.13.0"
quiet "$VENV/bin/python" -m pip install -q -c constraints-min.txt -e ".[test,$EXTRAS]"
# every core dependency and every dependency of those extras must sit exactly at its floor, or this
# run proves nothing
"$VENV/bin/python" - <<'PY'
import os
from importlib.metadata import requires, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

lines = [line.split("#")[0].strip() for line in open("constraints-min.txt")]
pins = {canonicalize_name(n): Version(v) for n, v in (line.split("==") for line in lines if "==" in line)}
extras = os.environ["OPTLAB_MIN_EXTRAS"].split(",")
wrong, checked = [], []
for req in (Requirement(r) for r in requires("optlab")):
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
        continue  # the test, docs and vision extras
    name = canonicalize_name(req.name)
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    checked.append(name)
    if name not in pins:
        wrong.append(f"{req.name}: no pin in constraints-min.txt")
    elif Version(Version(version(req.name)).public) != pins[name]:  # 2.13.0+cpu is 2.13.0
        wrong.append(f"{req.name}: installed {version(req.name)}, floor {pins[name]}")
    elif floors != [pins[name]]:
        wrong.append(f"{req.name}: pyproject says {req}, constraints-min.txt pins {pins[name]}")
unused = sorted(set(pins) - set(checked))
if unused:
    wrong.append(f"pinned in constraints-min.txt but not a dependency: {', '.join(unused)}")
if wrong:
    raise SystemExit("min_versions: " + "; ".join(wrong))
print("min_versions: " + ", ".join(f"{n}=={pins[n]}" for n in sorted(pins)))
PY
if "$VENV/bin/python" -m pip list 2>/dev/null | grep -i nvidia; then
  echo "error: a CUDA (nvidia-*) package was installed" >&2
  exit 1
fi
# The whole default suite (pass test paths to run a subset)
"$VENV/bin/python" -m pytest -q -m "not slow" -n "${OPTLAB_MIN_WORKERS:-2}" -p no:cacheprovider "$@"
