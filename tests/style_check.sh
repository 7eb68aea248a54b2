#!/bin/sh
# style_check.sh SRC_DIR - the house style holds on every C file: formatted as the committed
# .clang-format says (clang-format 14, Debian 12's; scripts/deps.sh installs it) and no line
# longer than 100 characters (comments included, which clang-format leaves alone).
cd "$1" || exit 1
command -v clang-format >/dev/null 2>&1 || {
    echo "style: clang-format not found (apt-get install clang-format)"
    exit 1
}
files=$(find include src tools tests bench examples -name '*.[ch]' | sort)
fail=0
# shellcheck disable=SC2086
if ! clang-format --dry-run --Werror $files; then
    echo "style: not formatted (clang-format -i FILE; $(clang-format --version))"
    fail=1
fi
# shellcheck disable=SC2086
python3 - $files <<'PY' || fail=1
import sys
bad = [(f, i, len(l)) for f in sys.argv[1:]
       for i, l in enumerate(open(f, encoding="utf-8").read().split("\n"), 1) if len(l) > 100]
for f, i, n in bad:
    print(f"{f}:{i}: {n} characters, expected at most 100")
sys.exit(1 if bad else 0)
PY
exit $fail
