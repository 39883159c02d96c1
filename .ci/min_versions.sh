#!/usr/bin/env bash
# Tested dependency floors (issue 23): a separate venv (.venv-min) with the LOWEST versions of the core
# dependencies that pyproject.toml declares (constraints-min.txt, torch kept at the CPU pin), optlab
# installed from the checkout with its test extra, then the default test suite (`-m "not slow"`).
# Usage: .ci/min_versions.sh [pytest args...]   (e.g. tests/test_stats.py to run a subset)
set -euo pipefail
# pip's output without the index's "Location ... ignored" noise; pip's exit status kept
quiet() { local rc=0 log; log=$(mktemp); "$@" >"$log" 2>&1 || rc=$?; grep -v "^WARNING: Location" "$log" || true; rm -f "$log"; return $rc; }
cd "$(dirname "$0")/.."
VENV=${OPTLAB_MIN_VENV:-.venv-min}
export PIP_DISABLE_PIP_VERSION_CHECK=1 OPTLAB_NO_PROGRESS=1
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
quiet "$VENV/bin/python" -m pip install -q -c constraints-min.txt "torch==2.13.0"
quiet "$VENV/bin/python" -m pip install -q -c constraints-min.txt -e ".[test]"
# every core dependency must sit exactly at its floor, or this run proves nothing
"$VENV/bin/python" - <<'PY'
from importlib.metadata import requires, version

from packaging.requirements import Requirement
from packaging.version import Version

lines = [line.split("#")[0].strip() for line in open("constraints-min.txt")]
pins = dict(line.split("==") for line in lines if "==" in line)
wrong = []
for req in (Requirement(r) for r in requires("optlab") if "extra ==" not in r):
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    if req.name not in pins:
        wrong.append(f"{req.name}: no pin in constraints-min.txt")
    elif Version(version(req.name)).base_version != Version(pins[req.name]).base_version:
        wrong.append(f"{req.name}: installed {version(req.name)}, floor {pins[req.name]}")
    elif floors != [Version(pins[req.name])]:
        wrong.append(f"{req.name}: pyproject says {req}, constraints-min.txt pins {pins[req.name]}")
if wrong:
    raise SystemExit("min_versions: " + "; ".join(wrong))
print("min_versions: " + ", ".join(f"{n}=={pins[n]}" for n in sorted(pins)))
PY
if "$VENV/bin/python" -m pip list 2>/dev/null | grep -i nvidia; then
  echo "error: a CUDA (nvidia-*) package was installed" >&2
  exit 1
fi
# The tests that exercise the core dependencies (numpy, pandas, scipy, matplotlib/seaborn, torch): the
# statistics, the analysis layer and the optimizer core. The whole default suite also needs the optional
# extras (pytorch_optimizer, lightning, ...) and has not been run at the floors yet: pass test paths to widen.
if [ "$#" -eq 0 ]; then
  set -- tests/test_stats.py tests/test_analysis.py tests/test_core.py
fi
"$VENV/bin/python" -m pytest -q -m "not slow" -n "${OPTLAB_MIN_WORKERS:-2}" -p no:cacheprovider "$@"
