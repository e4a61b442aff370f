#!/usr/bin/env bash
# Benchmark (not a test): the build-tool protocols of `taskvault serve` against the servers
# teams use for them today, in one run on this machine:
#   1. Turborepo artifact GET and PUT of 1 KiB and 10 MiB under 32 connections (wrk, 2 threads,
#      10 s), against turborepo-remote-cache (npm, the ducktors server, local storage), both with
#      a token and logging only warnings; requests per second, three rounds alternating;
#   2. a clean Bazel rebuild (a fresh output root) of a 200-genrule workspace with the server as
#      its HTTP remote cache, against nginx with WebDAV PUT (Debian) as the cache; wall time,
#      five rounds alternating, measured first (before the upload load leaves the disk busy).
# Installs wrk and nginx from Debian, turborepo-remote-cache from npm (into
# bench-out/tools), Bazel through scripts/install-tools.sh. Results: bench-out/tools_vs_peers.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
need=()
for t in nginx:nginx-light wrk:wrk curl:curl; do
    command -v "${t%%:*}" >/dev/null || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
tv="$(bash "$repo/scripts/build-release.sh")"
tools="$(bash "$repo/scripts/install-tools.sh")"
out="$repo/bench-out"
mkdir -p "$out/tools"
if [ ! -x "$out/tools/npm/node_modules/.bin/turborepo-remote-cache" ]; then
    npm install --silent --no-audit --no-fund --prefix "$out/tools/npm" turborepo-remote-cache@2.12.0
fi
report="$out/tools_vs_peers.md"
work="$(mktemp -d "${TMPDIR:-/tmp}/tvtools.XXXXXX")"
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }

# taskvault serve, with a write token for the team's namespace.
token="$("$tv" --dir "$work/tv" token create --scope write --namespace web 2>/dev/null)"
bazel_token="$("$tv" --dir "$work/tv" token create --scope write --namespace bazel 2>/dev/null)"
TASKVAULT_LOG=warn "$tv" --dir "$work/tv" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
pids+=("$!")
for _ in $(seq 200); do grep -q '^listening on' "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
tv_url="$(sed -n 's/^listening on //p' "$work/serve.out")"

# turborepo-remote-cache, local storage, the same token.
trc_port="$(free_port)"
mkdir -p "$work/trc"
NODE_ENV=production STORAGE_PROVIDER=local STORAGE_PATH="$work/trc" STORAGE_PATH_USE_TMP_FOLDER=false \
    TURBO_TOKEN="$token" PORT="$trc_port" HOST=127.0.0.1 LOG_LEVEL=warn ENABLE_STATUS_LOG=false \
    node "$out/tools/npm/node_modules/turborepo-remote-cache/dist/cli.js" >"$work/trc.log" 2>&1 &
pids+=("$!")
trc_url="http://127.0.0.1:$trc_port"
wait_http "$trc_url/v8/artifacts/status"

# 2. Bazel: 200 genrules, a clean rebuild from each cache.
bazel="$tools/bazel/bazel"
ws="$work/ws"
mkdir -p "$ws"
: >"$ws/WORKSPACE"
echo "source" >"$ws/src.txt"
cat >"$ws/BUILD" <<'EOF'
[genrule(
    name = "g%d" % i,
    srcs = ["src.txt"],
    outs = ["out%d.bin" % i],
    cmd = "cat $(location src.txt) > $@ && head -c 20000 /dev/urandom >> $@",
) for i in range(200)]
EOF
mkdir -p "$work/dav" "$work/nginx-tmp"
nport="$(free_port)"
cat >"$work/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    client_max_body_size 0;
    client_body_temp_path $work/nginx-tmp;
    proxy_temp_path $work/nginx-tmp;
    fastcgi_temp_path $work/nginx-tmp;
    uwsgi_temp_path $work/nginx-tmp;
    scgi_temp_path $work/nginx-tmp;
    server {
        listen 127.0.0.1:$nport;
        root $work/dav;
        location / {
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:rw all:r;
        }
    }
}
EOF
chmod 777 "$work/dav" "$work/nginx-tmp"
"$nginx_bin" -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err"
wait_http "http://127.0.0.1:$nport/"
build() { # cache-url output-root [flags...]
    local cache="$1" root="$2"
    shift 2
    (cd "$ws" && "$bazel" --batch --output_user_root="$root" build //:all --symlink_prefix=/ \
        --remote_cache="$cache" "$@" >/dev/null 2>&1)
}
tv_cache="$tv_url/bazel"
nginx_cache="http://127.0.0.1:$nport/bazel"
header="--remote_header=Authorization=Bearer $bazel_token"
# Fill both caches, then check a clean build is all remote hits from each.
build "$tv_cache" "$work/fill-tv" "$header"
build "$nginx_cache" "$work/fill-nginx"
for c in "$tv_cache" "$nginx_cache"; do
    (cd "$ws" && "$bazel" --batch --output_user_root="$work/check" build //:all --symlink_prefix=/ \
        --remote_cache="$c" "$header" 2>&1 | grep -q "200 remote cache hit") ||
        { echo "a clean build from $c was not all remote cache hits" >&2; exit 1; }
    chmod -R u+w "$work/check" && rm -rf "$work/check"
done
# Alternating runs (a disk still writing back one server's files slows whichever runs next).
build_in_root() { build "$1" "$work/root" "${@:2}"; }
{
    echo
    echo "## 2. A clean Bazel rebuild of 200 genrules (fresh output root, all remote cache hits), wall seconds"
    echo
    echo "| round | nginx WebDAV | taskvault serve | ratio |"
    echo "|---|---|---|---|"
} >"$work/bazel.md"
nsum=0
tsum=0
for round in 1 2 3 4 5; do
    chmod -R u+w "$work/root" 2>/dev/null || true
    rm -rf "$work/root"
    sync
    t0="$(date +%s.%N)"; build_in_root "$nginx_cache"; t1="$(date +%s.%N)"
    n="$(python3 -c "print(f'{$t1 - $t0:.2f}')")"
    chmod -R u+w "$work/root" && rm -rf "$work/root" && sync
    t0="$(date +%s.%N)"; build_in_root "$tv_cache" "$header"; t1="$(date +%s.%N)"
    t="$(python3 -c "print(f'{$t1 - $t0:.2f}')")"
    echo "| $round | $n | $t | $(python3 -c "print(f'{$t/$n:.2f}')") |" >>"$work/bazel.md"
    nsum="$(python3 -c "print($nsum + $n)")"
    tsum="$(python3 -c "print($tsum + $t)")"
done
echo "| mean | $(python3 -c "print(f'{$nsum/5:.2f}')") | $(python3 -c "print(f'{$tsum/5:.2f}')") | $(python3 -c "print(f'{$tsum/$nsum:.2f}')") |" >>"$work/bazel.md"

head -c 1024 /dev/urandom >"$work/1k.bin"
head -c $((10 << 20)) /dev/urandom >"$work/10m.bin"
for base in "$tv_url" "$trc_url"; do
    for f in 1k 10m; do
        code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/octet-stream' --data-binary "@$work/$f.bin" \
            "$base/v8/artifacts/bench$f?slug=web")"
        case "$code" in 2*) ;; *) echo "PUT to $base answered $code" >&2; exit 1 ;; esac
        curl -sf -H "Authorization: Bearer $token" "$base/v8/artifacts/bench$f?slug=web" |
            cmp - "$work/$f.bin"
    done
done

# PUTs of new artifacts (each request its own hash, as turbo uploads them), or of one hash
# over and over (UNIQUE=0: 10 MiB ones, so that the disk does not fill).
cat >"$work/put.lua" <<'EOF'
local f = io.open(os.getenv("BODY_FILE"), "rb")
local body = f:read("*a")
f:close()
local unique = os.getenv("UNIQUE") == "1"
local path = os.getenv("URL_PATH")
local headers = {
    ["Content-Type"] = "application/octet-stream",
    ["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
}
local n = 0
local threads = 0
function setup(thread)
    thread:set("tid", threads)
    threads = threads + 1
end
request = function()
    n = n + 1
    local p = path
    if unique then
        -- RUN_ID differs between runs: wrk seeds every thread's math.random alike, so without
        -- it a later round would PUT the hashes of an earlier one again (replacements, not new
        -- artifacts).
        p = "/v8/artifacts/new" .. os.getenv("RUN_ID") .. "x" .. tid .. "x" .. n .. "?slug=web"
    end
    return wrk.format("PUT", p, headers, body)
end
EOF
rps() { # method base path file -> requests/s; fails on any non-2xx
    if [ "$1" = GET ]; then
        wrk -t2 -c32 -d10s -H "Authorization: Bearer $token" "$2$3" >"$work/wrk.txt"
    else
        local unique=1
        [ "$(stat -c %s "$4")" -gt 1048576 ] && unique=0
        BODY_FILE="$4" TOKEN="$token" URL_PATH="$3" UNIQUE="$unique" RUN_ID="$(date +%s%N)" \
            wrk -t2 -c32 -d10s -s "$work/put.lua" "$2" >"$work/wrk.txt"
    fi
    if grep -q "Non-2xx" "$work/wrk.txt"; then cat "$work/wrk.txt" >&2; return 1; fi
    awk '/Requests\/sec/ {print $2}' "$work/wrk.txt"
}
{
    echo "# taskvault serve against the build tools' own servers ($(date -u +%Y-%m-%d), $(nproc) cores)"
    echo
    echo "## 1. Turborepo artifacts under 32 connections (wrk -t2 -c32 -d10s), requests/s"
    echo
    echo "GET: one artifact over and over. PUT 1k: a new artifact (hash) per request, as turbo"
    echo "uploads; PUT 10m: one hash over and over (new ones would fill the disk in seconds)."
    echo
    echo "| request | round | turborepo-remote-cache | taskvault serve | ratio |"
    echo "|---|---|---|---|---|"
} >"$report"
for spec in GET:1k GET:10m PUT:1k PUT:10m; do
    method="${spec%%:*}"
    f="${spec#*:}"
    for round in 1 2 3; do
        p="$(rps "$method" "$trc_url" "/v8/artifacts/bench$f?slug=web" "$work/$f.bin")"
        t="$(rps "$method" "$tv_url" "/v8/artifacts/bench$f?slug=web" "$work/$f.bin")"
        r="$(python3 -c "print(f'{$t/$p:.2f}')")"
        echo "| $method $f | $round | $p | $t | $r |" >>"$report"
    done
done

cat "$work/bazel.md" >>"$report"
cat "$report"
