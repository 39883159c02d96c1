#!/usr/bin/env bash
# Screenshots of sections of an optlab HTML report in a real headless Chromium.
#   docs/screenshots/shoot.sh REPORT_HTML OUT_DIR SECTION_ID...   (ids: the report's <h2 id=...>, e.g. cost)
# Each section is cut out of the report into its own page (same <head> and CSS, figures inline) and
# shot from the top at 1280x1200: scrolling a long page of inline images to an anchor gave blank
# shots in chromium-headless-shell 156. Needs `apt-get install chromium-headless-shell` (or set
# CHROMIUM=chromium) and python3.
set -euo pipefail
report=$1; out=$2; shift 2
browser=${CHROMIUM:-chromium-headless-shell}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for id in "$@"; do
  python3 - "$report" "$id" "$tmp/$id.html" <<'PY'
import sys
html = open(sys.argv[1], encoding="utf-8").read()
head = html[: html.index("<body>") + len("<body>")]
start = html.index(f"<h2 id='{sys.argv[2]}'>")
nxt = html.find("<h2 id=", start + 1)
body = html[start : nxt if nxt > 0 else html.index("</body>")]
open(sys.argv[3], "w", encoding="utf-8").write(head + body + "</body></html>")
PY
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1200 \
    --screenshot="$out/$id.png" "file://$tmp/$id.html" >/dev/null 2>&1
  echo "wrote $out/$id.png"
done
