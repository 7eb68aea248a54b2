#!/usr/bin/env bash
# ab.sh - two builds of mha side by side: did a change make any benchmark shape slower?
#
#   bench/ab.sh OLD_MHA NEW_MHA            e.g. bench/ab.sh /tmp/old/build/mha build/mha
#   THREADS=2 ROUNDS=3 OUT=/tmp/ab.md      (defaults: 2 threads, 3 rounds, markdown on stdout)
#
# Runs every `mha bench` command of bench/compare.sh (the module and core shapes, forward and
# forward + backward, need_weights, dropout, the projections' gemm shapes) with the old and the
# new binary alternately, ROUNDS times, and keeps each binary's best median per command (a slow
# spell of the shared machine has to hit the same command in every round to show). The table
# gives new/old time ratios: above 1 is slower. Only ratios: the machine is shared and noisy.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bench/ab.sh OLD_MHA NEW_MHA" >&2; exit 1; }
OLD=$1 NEW=$2
for b in "$OLD" "$NEW"; do [ -x "$b" ] || { echo "ab.sh: $b: not an executable" >&2; exit 1; }; done
T=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cmds=()
for s in 1,512,512,8,0 1,2048,512,8,0 1,2048,512,8,1 4,256,768,12,0 1,4096,1024,16,1; do
    IFS=, read -r B N E H C <<< "$s"
    sh="--batch $B --seq $N --embed $E --heads $H --threads $T --runs 7 --budget 3"
    [ "$C" = 1 ] && sh="$sh --causal"
    for x in "" "--backward" "--need-weights" "--core" "--core --backward"; do cmds+=("$sh $x"); done
done
for s in 1,2048,1024,8,0 1,2048,1024,8,1 1,8192,1024,8,1; do
    IFS=, read -r B N E H C <<< "$s"
    sh="--batch $B --seq $N --embed $E --heads $H --threads $T --runs 5 --budget 3 --core"
    [ "$C" = 1 ] && sh="$sh --causal"
    cmds+=("$sh" "$sh --backward")
done
cmds+=("--batch 1 --seq 2048 --embed 512 --heads 8 --threads $T --runs 7 --budget 3 --core --backward --dropout 0.1")
for s in 512,512 2048,512 1024,768 4096,1024; do
    IFS=, read -r M E <<< "$s"
    for g in "$M $((3 * E)) $E 0 1" "$M $E $E 0 1" "$M $E $((3 * E)) 0 0" "$((3 * E)) $E $M 1 0"; do
        read -r gm gn gk ta tb <<< "$g"
        cmds+=("--gemm $gm $gn $gk --ta $ta --tb $tb --threads $T --runs 10")
    done
done

for r in $(seq "$ROUNDS"); do
    echo "round $r of $ROUNDS (${#cmds[@]} commands x 2 binaries)" >&2
    for i in "${!cmds[@]}"; do
        for which in old new; do
            bin=$OLD; [ $which = new ] && bin=$NEW
            # shellcheck disable=SC2086
            ms=$("$bin" bench ${cmds[$i]} --json | tail -n 1 | sed 's/.*"median_ms":\([0-9.e+-]*\).*/\1/')
            echo "$i $which $ms" >> "$TMP/res"
        done
    done
done

{
    echo "| command (\`mha bench ...\`) | old ms | new ms | new/old |"
    echo "|---|---:|---:|---:|"
    for i in "${!cmds[@]}"; do
        o=$(awk -v i="$i" '$1 == i && $2 == "old" { if (m == "" || $3 < m) m = $3 } END { print m }' "$TMP/res")
        n=$(awk -v i="$i" '$1 == i && $2 == "new" { if (m == "" || $3 < m) m = $3 } END { print m }' "$TMP/res")
        awk -v c="${cmds[$i]}" -v o="$o" -v n="$n" 'BEGIN { printf "| %s | %.3f | %.3f | %.3f |\n", c, o, n, n / o }'
    done
    awk '{ k = $1 " " $2; if (!(k in m) || $3 < m[k]) m[k] = $3 }
         END { for (k in m) { split(k, a, " "); if (a[2] == "old") { r = m[a[1] " new"] / m[k];
               s += log(r); n++; if (r > w) w = r } }
               printf "\n%d commands, best of %d rounds each: geometric mean new/old %.3f, worst %.3f\n",
                      n, '"$ROUNDS"', exp(s / n), w }' "$TMP/res"
} > "$TMP/out.md"
if [ -n "${OUT:-}" ]; then mv "$TMP/out.md" "$OUT"; else cat "$TMP/out.md"; fi
