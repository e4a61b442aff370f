#!/usr/bin/env bash
# Benchmark (not a test) for `taskvault run`, side by side with bkt in one run:
#   1. hit overhead on a trivial command: `taskvault run -- CMD` vs `bkt -- CMD`, and the bare command;
#   2. re-checking an unchanged 1 GiB input (stat cache): a hit with `-i big.bin` vs without;
#   3. restoring a 1 GiB output on a hit vs `cp` of the same file.
# bkt is installed from crates.io into bench-out/tools. Results: bench-out/run_vs_bkt.md
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/bench-out"
mkdir -p "$out/tools"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
[ -x "$out/tools/bin/bkt" ] || cargo install --locked --quiet --root "$out/tools" bkt
bkt="$out/tools/bin/bkt"
tv="$(bash "$repo/scripts/build-release.sh")"
work="$(mktemp -d "${TMPDIR:-/tmp}/tvrun.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
# No size limits: the default policy refuses entries over 100 MiB, and this saves 1 GiB.
printf 'max_size_gb: 0\npolicies:\n  default:\n    max_size_bytes: 0\n' > "$work/taskvault.yaml"
export TASKVAULT_DIR="$work/vault" TASKVAULT_CONFIG="$work/taskvault.yaml" BKT_CACHE_DIR="$work/bkt" NO_COLOR=1
report="$out/run_vs_bkt.md"
: > "$report"

echo "## 1. Hit overhead on a trivial command (echo hello)" >> "$report"
"$tv" run -q -- echo hello >/dev/null
"$bkt" --ttl=1d -- echo hello >/dev/null
for round in 1 2 3; do
    hyperfine -N --warmup 20 --min-runs 300 --export-markdown "$work/t.md" --export-json "$out/run-hit-$round.json" \
        -n "echo hello (no cache)" "echo hello" \
        -n "bkt --ttl=1d -- echo hello (hit)" "$bkt --ttl=1d -- echo hello" \
        -n "taskvault run -- echo hello (hit)" "$tv run -q -- echo hello"
    cat "$work/t.md" >> "$report"
done

echo "## 2. Re-checking an unchanged 1 GiB input" >> "$report"
head -c 1073741824 /dev/urandom > big.bin
sleep 3   # older than the racy-timestamp window, as an input that was not just written
"$tv" run -q -i big.bin -- true
"$tv" run -q -- true
hyperfine -N --warmup 5 --min-runs 100 --export-markdown "$work/t.md" --export-json "$out/run-recheck.json" \
    -n "taskvault run -- true (hit, no input)" "$tv run -q -- true" \
    -n "taskvault run -i big.bin -- true (hit, 1 GiB input)" "$tv run -q -i big.bin -- true"
cat "$work/t.md" >> "$report"

echo "## 3. Restoring a 1 GiB output" >> "$report"
"$tv" run -q -o out.bin -- cp big.bin out.bin
hyperfine -N --warmup 2 --min-runs 10 --export-markdown "$work/t.md" --export-json "$out/run-restore.json" \
    -n "cp big.bin copy.bin" "cp big.bin copy.bin" \
    -n "taskvault run -o out.bin (hit, restores 1 GiB)" "$tv run -q -o out.bin -- cp big.bin out.bin"
cat "$work/t.md" >> "$report"
cmp big.bin out.bin
# The timed runs must have been hits, not re-runs of cp.
"$tv" --json run -q -o out.bin -- cp big.bin out.bin 2>&1 | tail -1 | grep -q '"hit":true'
"$tv" --json run -q -i big.bin -- true 2>&1 | tail -1 | grep -q '"hit":true'

# Instructions executed by one hit of each (callgrind): repeatable where wall time is not.
if command -v valgrind >/dev/null; then
    echo "## Instructions per process (callgrind)" >> "$report"
    for cmd in "echo hello" "$bkt --ttl=1d -- echo hello" "$tv run -q -- echo hello"; do
        n=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null $cmd 2>&1 >/dev/null | awk '/refs:/ {print $NF}')
        echo "- \`${cmd/#$out\/tools\/bin\//}\`: $n" >> "$report"
    done
fi

python3 - "$out" >> "$report" <<'PY'
import json, sys, glob
o = sys.argv[1]
print("\n## Medians")
for f in sorted(glob.glob(f"{o}/run-hit-*.json")):
    r = {x["command"]: x["median"] * 1000 for x in json.load(open(f))["results"]}
    tv = [v for k, v in r.items() if "taskvault" in k][0]
    bkt = [v for k, v in r.items() if "bkt" in k][0]
    print(f"- hit: taskvault {tv:.2f} ms, bkt {bkt:.2f} ms, ratio {tv / bkt:.2f}")
r = [x["median"] * 1000 for x in json.load(open(f"{o}/run-recheck.json"))["results"]]
print(f"- 1 GiB input re-check: {r[1] - r[0]:.2f} ms ({r[1]:.2f} vs {r[0]:.2f} ms)")
r = [x["median"] * 1000 for x in json.load(open(f"{o}/run-restore.json"))["results"]]
print(f"- 1 GiB restore: taskvault {r[1]:.0f} ms, cp {r[0]:.0f} ms, ratio {r[1] / r[0]:.2f}")
PY
echo; echo "== $report"; cat "$report"
