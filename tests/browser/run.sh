#!/bin/sh
# run.sh TEST_VIZ OUTDIR - writes the sample page with TEST_VIZ, then opens it in headless
# Chromium through playwright-core (html_test.js). Installs node_modules with `npm ci` when
# missing. Exit 77 = skipped (no chromium, node or npm), unless $MHA_REQUIRE_BROWSER is set.
here=$(cd "$(dirname "$0")" && pwd)
test_viz=$1
out=$2
skip() {
    if [ -n "$MHA_REQUIRE_BROWSER" ]; then
        echo "viz_browser: FAILED: $1 (MHA_REQUIRE_BROWSER is set)"
        exit 1
    fi
    echo "viz_browser: SKIPPED: $1 (set MHA_REQUIRE_BROWSER=1 to make this a failure)"
    exit 77
}
chromium=${MHA_CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || skip "no chromium at $chromium"
command -v node >/dev/null 2>&1 || skip "node is not installed"
mkdir -p "$out" || exit 1
"$test_viz" --write-html "$out/sample.html" || exit 1
if [ ! -d "$here/node_modules/playwright-core" ]; then
    command -v npm >/dev/null 2>&1 || skip "npm is not installed (needed once for npm ci)"
    echo "viz_browser: running npm ci in $here"
    # one installer at a time when several build trees test at once
    (cd "$here" && if command -v flock >/dev/null 2>&1; then
        flock "${TMPDIR:-/tmp}/mha-viz-npm-ci.lock" sh -c '[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund'
    else
        npm ci --no-audit --no-fund
    fi) || skip "npm ci failed (is the npm registry reachable?)"
fi
exec node "$here/html_test.js" "$out/sample.html" "$out" "$chromium"
