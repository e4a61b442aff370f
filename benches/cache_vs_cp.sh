#!/usr/bin/env bash
# Benchmark (not a test): `taskvault cache get` (a hit) against `cp` of the same file, as whole
# processes, at 1 KiB, 1 MiB and 100 MiB; and `taskvault cache save` of the same files.
# Needs hyperfine (installed from Debian's packages if missing). Results: bench-out/cache_vs_cp.md
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
tv="$(bash "$repo/scripts/build-release.sh")"
out="$repo/bench-out"
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/tvbench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
export TASKVAULT_DIR="$work/vault" NO_COLOR=1
printf 'input\n' > in.txt

report="$out/cache_vs_cp.md"
: > "$report"
for spec in 1KiB:1024 1MiB:1048576 100MiB:104857600; do
    name="${spec%%:*}"; bytes="${spec##*:}"
    head -c "$bytes" /dev/urandom > "src-$name"
    "$tv" cache save "get-$name" in.txt "src-$name" 2>/dev/null
    runs=()
    [ "$bytes" -ge 100000000 ] && runs=(--min-runs 15) || runs=(--min-runs 200)
    echo "## $name" >> "$report"
    # Three rounds: on a shared machine the two commands can see different load within one.
    for round in 1 2 3; do
        hyperfine -N --warmup 5 "${runs[@]}" --export-markdown "$work/get-$name.md" \
            --export-json "$out/get-$name-$round.json" \
            -n "cp" "cp src-$name dst-cp-$name" \
            -n "taskvault cache get (hit)" "$tv cache get get-$name in.txt dst-tv-$name"
        cat "$work/get-$name.md" >> "$report"
    done
    cmp "src-$name" "dst-tv-$name"
    # Saves: into a fresh vault each time, and again when the blob is already stored.
    hyperfine -N --warmup 3 "${runs[@]}" --export-markdown "$work/save-$name.md" \
        --export-json "$out/save-$name.json" \
        --prepare "rm -rf $work/fresh" \
        -n "cp" "cp src-$name dst-cp-$name" \
        -n "taskvault cache save (new vault)" "$tv --dir $work/fresh cache save save-$name in.txt src-$name" \
        -n "taskvault cache save (already stored)" "$tv cache save get-$name in.txt src-$name"
    cat "$work/save-$name.md" >> "$report"
    echo >> "$report"
done
# Instructions executed by one hit and by one cp (valgrind's callgrind): unlike wall time on a
# shared machine, these repeat exactly, so they show whether a change made the hit path cheaper.
if command -v valgrind >/dev/null; then
    echo "## Instructions per process (callgrind)" >> "$report"
    for name in 1KiB 1MiB; do
        for cmd in "cp src-$name dst-cp-$name" "$tv cache get get-$name in.txt dst-tv-$name"; do
            n=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null $cmd 2>&1 >/dev/null | awk '/refs:/ {print $NF}')
            echo "- $name \`${cmd/#$tv/taskvault}\`: $n" >> "$report"
        done
    done
fi

# Median ratios per round (the figures quoted in notes).
python3 - "$out" >> "$report" <<'PY'
import json, sys, glob
print("\n## Median ratio taskvault / cp, per round")
for size in ["1KiB", "1MiB", "100MiB"]:
    ratios = []
    for f in sorted(glob.glob(f"{sys.argv[1]}/get-{size}-*.json")):
        r = json.load(open(f))["results"]
        ratios.append(r[1]["median"] / r[0]["median"])
    print(f"- get {size}: " + ", ".join(f"{x:.2f}" for x in ratios))
PY
echo; echo "== $report"; cat "$report"
