#!/usr/bin/env bash
# deps.sh [BUILD_DIR] [--bench] - sets up everything the tests (and benchmarks) need on Debian 12.
#
# The library itself needs only a C11 compiler, CMake, libm and OpenMP. The tests also need:
#   Debian packages  valgrind (memcheck tests), libpng-dev (the PNG writer), chromium (the HTML
#                    page test), python3-venv, clang-format (the style test), libopenmpi-dev
#                    and openmpi-bin (libmha_mpi and its tests, run with mpirun); with --bench also
#                    libopenblas-dev and time;
#   a Python venv    BUILD_DIR/venv with tests/requirements.txt installed: PyTorch 2.13 (the
#                    reference), numpy, pytest, safetensors, playwright (drives Debian's chromium).
# Missing Debian packages are installed with apt-get when run as root; otherwise the script says
# which ones and fails. The venv is created once and re-synced whenever tests/requirements.txt
# changes. A dependency that cannot be had fails here: no test is ever skipped for lack of one.
set -euo pipefail
cd "$(dirname "$0")/.."

build=build
bench=0
for a in "$@"; do
  case $a in
    --bench) bench=1 ;;
    -*) echo "deps: unknown option $a" >&2; exit 1 ;;
    *) build=$a ;;
  esac
done

# --- Debian packages ---------------------------------------------------------------------------
pkgs=(cmake gcc make pkg-config valgrind libpng-dev zlib1g-dev chromium python3 python3-venv
      clang-format libopenmpi-dev openmpi-bin)
[ "$bench" = 1 ] && pkgs+=(libopenblas-dev time)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: error: missing Debian packages: ${missing[*]}" >&2
    echo "hint: sudo apt-get install -y ${missing[*]}   (or run make test as root)" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi

# --- the Python venv -----------------------------------------------------------------------------
# Debian's python3 (3.11 on Debian 12, the version the pinned torch wheel is built for).
req=tests/requirements.txt
venv=$build/venv
stamp=$venv/.requirements.txt
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp"; then
  exit 0
fi
mkdir -p "$build"
echo "deps: setting up $venv from $req"
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req"
# Prove the reference is the one asked for before any test relies on it.
"$venv/bin/python" - "$req" <<'PY'
import sys
import numpy, pytest, safetensors, playwright, torch  # noqa: F401
want = [l.split("==")[1].strip() for l in open(sys.argv[1]) if l.startswith("torch==")][0]
if torch.__version__.split("+")[0] != want:
    sys.exit(f"deps: error: the venv has torch {torch.__version__}, expected {want}")
print(f"deps: venv ready: torch {torch.__version__}, numpy {numpy.__version__}")
PY
cp "$req" "$stamp"
