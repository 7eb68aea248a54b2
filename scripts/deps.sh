#!/usr/bin/env bash
# deps.sh - installs what the tests need on Debian 12, when it is missing.
#
# The library itself needs only a C11 compiler, CMake, libm and OpenMP. The tests also use
# PyTorch and NumPy (the reference), pytest, libpng (PNG writer) and Chromium with npm's
# playwright-core (the HTML page test). Run as root, this installs what is missing with apt-get
# (and npm for playwright-core); otherwise it lists what is missing and the tests that need it
# report a skip (or fail, when MHA_REQUIRE_TORCH / MHA_REQUIRE_BROWSER are set, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake gcc make pkg-config valgrind python3-torch python3-numpy python3-pytest libpng-dev zlib1g-dev chromium)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "hint: sudo apt-get install -y ${missing[*]}   (tests that need them will skip)" >&2
  fi
fi

# playwright-core for the browser test, pinned by tests/browser/package-lock.json.
if [ -f tests/browser/package-lock.json ] && [ ! -d tests/browser/node_modules/playwright-core ]; then
  if command -v npm >/dev/null 2>&1; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  else
    echo "deps: npm not found: the browser test will skip" >&2
  fi
fi
