#!/usr/bin/env bash
# Benchmark (not a test): `taskvault serve` against nginx (Debian's nginx-light) serving the same
# bytes as static files, in one run on this machine:
#   1. GET of a 1 KiB and a 1 MiB blob under 64 connections (wrk, 2 threads, 10 s; three rounds,
#      alternating), requests per second;
#   2. a remote hit of a 1 KiB output through the CLI (`cache get` into an empty local vault)
#      against a local hit (hyperfine);
#   3. a 1 GiB remote hit against `curl` downloading the same file from nginx;
#   4. the server's peak RSS while 16 clients download the 1 GiB blob at once.
# Installs nginx-light, wrk, hyperfine and curl from Debian if missing. Results:
# bench-out/serve_vs_nginx.md. BIG_MIB=1024 by default (the 1 GiB figures).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
need=()
for t in nginx:nginx-light wrk:wrk hyperfine:hyperfine curl:curl; do
    command -v "${t%%:*}" >/dev/null || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
tv="$(bash "$repo/scripts/build-release.sh")"
out="$repo/bench-out"
mkdir -p "$out"
report="$out/serve_vs_nginx.md"
work="$(mktemp -d "${TMPDIR:-/tmp}/tvserve.XXXXXX")"
chmod 755 "$work"   # nginx's workers (not root) read the static files
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
big_mib="${BIG_MIB:-1024}"

# The server, and a client machine that saves the test files through it.
TASKVAULT_LOG=warn "$tv" --dir "$work/server" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server=$!
pids+=("$server")
for _ in $(seq 200); do grep -q '^listening on' "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url="$(sed -n 's/^listening on //p' "$work/serve.out")"
for m in a b; do
    mkdir -p "$work/$m/.taskvault"
    printf 'remote:\n  url: %s\npolicies:\n  default:\n    max_size_bytes: 0\nmax_size_gb: 0\n' "$url" \
        >"$work/$m/.taskvault/config.yaml"
done
printf 'input\n' >"$work/in.txt"
mkdir -p "$work/static"
head -c 1024 /dev/urandom >"$work/static/1k.bin"
head -c $((1 << 20)) /dev/urandom >"$work/static/1m.bin"
head -c $((big_mib << 20)) /dev/urandom >"$work/static/big.bin"
digest() { # task file -> the blob's digest, saved from machine a
    "$tv" --config "$work/a/.taskvault/config.yaml" --json cache save "$1" "$work/in.txt" "$2" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"][0]["digest"])'
}
d1k="$(digest b1k "$work/static/1k.bin")"
d1m="$(digest b1m "$work/static/1m.bin")"
dbig="$(digest big "$work/static/big.bin")"

# nginx on the same files: two workers (the machine's cores), sendfile, no access log.
nport="$(free_port)"
cat >"$work/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $work/nginx-tmp;
    proxy_temp_path $work/nginx-tmp;
    fastcgi_temp_path $work/nginx-tmp;
    uwsgi_temp_path $work/nginx-tmp;
    scgi_temp_path $work/nginx-tmp;
    server { listen 127.0.0.1:$nport; root $work/static; }
}
EOF
mkdir -p "$work/nginx-tmp"
"$nginx_bin" -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err"
chmod -R a+rX "$work/static"
nurl="http://127.0.0.1:$nport"
for _ in $(seq 100); do curl -sf -o /dev/null "$nurl/1k.bin" && break; sleep 0.05; done
# Both serve the same bytes (a benchmark of error pages would be worthless).
for f in 1k.bin:$d1k 1m.bin:$d1m; do
    curl -sf "$nurl/${f%%:*}" | cmp - "$work/static/${f%%:*}"
    curl -sf "$url/v1/ns/default/blobs/${f#*:}" | cmp - "$work/static/${f%%:*}"
done

{
    echo "# taskvault serve against nginx ($(date -u +%Y-%m-%d), $(nproc) cores)"
    echo
    echo "## 1. GET under 64 connections (wrk -t2 -c64 -d10s), requests/s"
    echo
    echo "| blob | round | nginx | taskvault serve | ratio |"
    echo "|---|---|---|---|---|"
} >"$report"
rps() { # fails if any response was not a 2xx
    wrk -t2 -c64 -d10s "$1" >"$work/wrk.txt"
    if grep -q "Non-2xx" "$work/wrk.txt"; then cat "$work/wrk.txt" >&2; return 1; fi
    awk '/Requests\/sec/ {print $2}' "$work/wrk.txt"
}
for spec in 1KiB:1k.bin:$d1k 1MiB:1m.bin:$d1m; do
    IFS=: read -r name file alg hex <<<"$spec"
    for round in 1 2 3; do
        n="$(rps "$nurl/$file")"
        t="$(rps "$url/v1/ns/default/blobs/$alg:$hex")"
        r="$(python3 -c "print(f'{$t/$n:.2f}')")"
        echo "| $name | $round | $n | $t | $r |" >>"$report"
    done
done

# 2. A remote hit of 1 KiB through the CLI against a local hit.
{
    echo
    echo "## 2. A 1 KiB hit through the CLI: remote (empty local vault) against local"
    echo
} >>"$report"
# An empty local vault (made, then cleared: a CI node whose cache lacks this result), and no
# vault at all (its first use on a fresh machine also creates it).
"$tv" --dir "$work/empty" cache save x "$work/in.txt" "$work/in.txt" 2>/dev/null
"$tv" --dir "$work/empty" clear --yes 2>/dev/null
hyperfine -N --warmup 5 --min-runs 100 --export-markdown "$work/hit.md" \
    --prepare "sh -c 'rm -rf $work/b/.taskvault/cache && cp -a $work/empty $work/b/.taskvault/cache'" \
    -n "remote hit (cache get, empty local vault)" \
    "$tv --config $work/b/.taskvault/config.yaml cache get b1k $work/in.txt $work/b/out1k" \
    --prepare "rm -rf $work/b/.taskvault/cache" \
    -n "remote hit (cache get, no local vault yet)" \
    "$tv --config $work/b/.taskvault/config.yaml cache get b1k $work/in.txt $work/b/out1k" >/dev/null
hyperfine -N --warmup 5 --min-runs 100 --export-markdown "$work/hit-local.md" \
    -n "local hit (cache get)" \
    "$tv --config $work/a/.taskvault/config.yaml cache get b1k $work/in.txt $work/a/out1k" >/dev/null
cat "$work/hit.md" >>"$report"
tail -n +3 "$work/hit-local.md" >>"$report"

# 3. The big remote hit against curl from nginx.
{
    echo
    echo "## 3. A ${big_mib} MiB remote hit against curl from nginx"
    echo
} >>"$report"
# The local vault makes its copy durable (fsync) before it records it; curl does not sync, so
# `curl` and `sync` of its file are shown too. Every run starts with no dirty pages left over.
hyperfine -N --warmup 1 --runs 5 --export-markdown "$work/big.md" \
    --prepare "sh -c 'rm -f $work/curl.out && sync'" \
    -n "curl from nginx" "curl -s -o $work/curl.out $nurl/big.bin" \
    --prepare "sh -c 'rm -f $work/curl.out && sync'" \
    -n "curl from nginx, then sync of its file" \
    "sh -c 'curl -s -o $work/curl.out $nurl/big.bin && sync $work/curl.out'" \
    --prepare "sh -c 'rm -rf $work/b/.taskvault/cache $work/b/outbig && sync'" \
    -n "taskvault cache get (remote hit)" \
    "$tv --config $work/b/.taskvault/config.yaml cache get big $work/in.txt $work/b/outbig" >/dev/null
cat "$work/big.md" >>"$report"
cmp "$work/static/big.bin" "$work/b/outbig"
cmp "$work/static/big.bin" "$work/curl.out"

# 4. Server memory while 16 clients download the big blob at once.
peak=0
for i in $(seq 16); do
    curl -s -o /dev/null "$url/v1/ns/default/blobs/$dbig" &
    pids+=("$!")
done
clients=("${pids[@]:1}")
while kill -0 "${clients[@]}" 2>/dev/null; do
    rss="$(awk '/VmRSS/ {print $2}' "/proc/$server/status")"
    [ "$rss" -gt "$peak" ] && peak="$rss"
    sleep 0.05
    alive=0
    for p in "${clients[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
done
wait "${clients[@]}" 2>/dev/null || true
pids=("$server")
{
    echo
    echo "## 4. Server RSS while 16 clients download the ${big_mib} MiB blob at once"
    echo
    echo "peak VmRSS: $((peak / 1024)) MiB"
} >>"$report"
cat "$report"
