#!/usr/bin/env bash
# The distribution as a user gets it (issue 23): build optlab's sdist and wheel (`python -m build`:
# the wheel is built from the sdist, so a file missing from the sdist fails here), install the wheel
# into a fresh venv OUTSIDE the checkout (CPU torch first, pinned by constraints.txt), and from a
# directory outside the checkout run the commands a new user runs. The example plugin
# plugins/optlab-fisher is built and installed from its own wheel too.
# Usage: .ci/wheel_check.sh   (needs the project's .venv from ./setup.sh; KEEP=1 keeps the temp dir)
set -euo pipefail
# pip's output without the index's "Location ... ignored" noise; pip's exit status kept
quiet() { local rc=0 log; log=$(mktemp); "$@" >"$log" 2>&1 || rc=$?; grep -v "^WARNING: Location" "$log" || true; rm -f "$log"; return $rc; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/optlab-wheel.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
step() { echo "== wheel_check: $*"; }
fail() { echo "wheel_check FAILED: $*" >&2; exit 1; }
export OPTLAB_NO_PROGRESS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

step "build sdist + wheel (optlab, optlab-fisher) into $WORK/dist"
quiet .venv/bin/python -m pip install -q -c constraints.txt "build>=1"
.venv/bin/python -m build -q --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; fail "build of optlab"; }
.venv/bin/python -m build -q --outdir "$WORK/dist" plugins/optlab-fisher >>"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; fail "build of optlab-fisher"; }
WHEEL=$(ls "$WORK"/dist/optlab-*-py3-none-any.whl)
FISHER=$(ls "$WORK"/dist/optlab_fisher-*-py3-none-any.whl)
ls "$WORK"/dist

step "wheel contents: py.typed, LICENSE, only optlab/ at the top level"
.venv/bin/python - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert "optlab/py.typed" in names, "optlab/py.typed is not in the wheel"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE is not in the wheel"
top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
assert top == {"optlab"}, f"unexpected top-level entries in the wheel: {sorted(top - {'optlab'})}"
ep = next(n for n in names if n.endswith("entry_points.txt"))
text = zipfile.ZipFile(sys.argv[1]).read(ep).decode()
assert "[optlab]" in text and "builtins = optlab.builtins" in text, text
print(f"{len(names)} files; py.typed, LICENSE and the builtins entry point present")
EOF

step "fresh venv outside the checkout: $WORK/venv"
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
quiet "$PY" -m pip install -q --upgrade pip  # a pip that shows License-Expression (metadata 2.4)
quiet "$PY" -m pip install -q -c constraints.txt "torch==2.13.0"
quiet "$PY" -m pip install -q -c constraints.txt "$WHEEL"
if "$PY" -m pip list 2>/dev/null | grep -i nvidia; then fail "a CUDA (nvidia-*) package was installed"; fi

RUN="$WORK/run"
mkdir -p "$RUN"
cd "$RUN"  # nothing of the checkout is importable from here
OPTLAB="$WORK/venv/bin/optlab"

step "import optlab with DeprecationWarning as an error; it is the installed copy"
"$PY" -W error::DeprecationWarning -c "
import optlab, sys
assert optlab.__file__.startswith('$WORK/venv/'), optlab.__file__
assert optlab.__version__ == '$(basename "$WHEEL" | cut -d- -f2)', optlab.__version__
print('optlab', optlab.__version__, 'from', optlab.__file__)"

step "pip show: license and URLs"
"$PY" -m pip show -v optlab >show.txt
cat show.txt | grep -E "^(Name|Version|License|License-Expression|Author|Project-URLs|  [A-Za-z]+, https)" || true
grep -q "^License-Expression: MIT" show.txt || grep -q "^License: MIT" show.txt || fail "pip show: no MIT license"
grep -qE "^  Paper, https://" show.txt || fail "pip show: no project URLs"

step "optlab plugins (built-ins registered through the entry point)"
"$OPTLAB" plugins >plugins.txt
grep -q "sgd-ph" plugins.txt || { cat plugins.txt; fail "optlab plugins does not list sgd-ph"; }

step "one-epoch optlab train"
"$OPTLAB" train --task digits --model mlp-bn --model-option width=16 --optimizer sgd-ph --epochs 1 \
  --batch-size 128 --out train.json
"$PY" -c "import json; r = json.load(open('train.json')); assert r['status'] == 'ok', r['status']"

step "tiny optlab grid run + status + report"
cat >tiny.toml <<'EOF'
name = "tiny"
seeds = [0]

[run]
epochs = 1
batch_size = 128

[[setting]]
task = "digits"
model = "mlp-bn"
model_options = { width = 16 }

[[optimizer]]
name = "sgd-ph"
lr = [0.1]

[[optimizer]]
name = "sgd"
lr = [0.1]
EOF
"$OPTLAB" grid run tiny.toml --workers 1 --results results/tiny
"$OPTLAB" grid status tiny.toml --results results/tiny
"$OPTLAB" report results/tiny -o reports/tiny >report.txt
cat report.txt
[ -s reports/tiny/report.html ] || fail "optlab report wrote no report.html"

step "example plugin from its own wheel"
quiet "$PY" -m pip install -q -c "$ROOT/constraints.txt" "$FISHER"
"$OPTLAB" plugins >plugins.txt
grep -q "fisher:" plugins.txt || grep -q "sgd-ef" plugins.txt || { cat plugins.txt; fail "optlab-fisher not listed"; }
"$OPTLAB" train --task digits --model mlp-bn --model-option width=16 --optimizer sgd-ef --epochs 1 --batch-size 128
if "$PY" -m pip list 2>/dev/null | grep -i nvidia; then fail "a CUDA (nvidia-*) package was installed"; fi

step "OK: the wheel works outside the checkout"
