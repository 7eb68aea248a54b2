#!/usr/bin/env bash
# symbols_test.sh LIBMHA_SO HEADER... - the dynamic symbols libmha.so defines must be exactly
# the functions the headers declare with MHA_API (the build hides everything else).
set -euo pipefail
lib=$1
shift
command -v nm >/dev/null || { echo "symbols: nm not found (binutils)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '{print $NF}' | sort -u >"$tmp/exported"
sed -n 's/^MHA_API .*[^a-z_0-9]\(mha_[a-z_0-9]*\)(.*/\1/p' "$@" | sort -u >"$tmp/public"
[ -s "$tmp/public" ] || { echo "symbols: no MHA_API declarations found in $*"; exit 1; }
extra=$(comm -23 "$tmp/exported" "$tmp/public")
missing=$(comm -13 "$tmp/exported" "$tmp/public")
[ -z "$extra" ] || { echo "symbols: exported but not public API:"; echo "$extra"; }
[ -z "$missing" ] || { echo "symbols: declared MHA_API but not exported:"; echo "$missing"; }
[ -z "$extra$missing" ] || exit 1
echo "symbols: ok ($(wc -l <"$tmp/public") public functions, nothing else exported)"
