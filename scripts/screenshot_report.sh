#!/usr/bin/env bash
# Screenshot a report page with headless Chromium (the browser tests/test_report.py drives), to review it.
# usage: scripts/screenshot_report.sh [REPORT.html (reports/report.html)] [OUT.png (next to it)] [HEIGHT px (8000)]
set -euo pipefail
page="${1:-reports/report.html}"
out="${2:-${page%.html}.png}"
height="${3:-8000}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "error: no headless Chromium (apt-get install chromium)" >&2; exit 2; }
[ -f "$page" ] || { echo "error: no report page $page (run specbench report first)" >&2; exit 2; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1280,$height" \
  --screenshot="$(realpath -m "$out")" "file://$(realpath "$page")" >/dev/null 2>&1
echo "screenshot: $out (1280 x $height px)"
