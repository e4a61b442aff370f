#!/usr/bin/env bash
# Benchmark (not a test): the Python SDK on Redis (`Client(store="redis://...")`) against
# cashet's own `RedisStore`, on the same redis-server (one of the benchmark's own, on a free
# loopback port, nothing saved to disk), in one run. cashet[redis] comes from PyPI into the
# benchmark's virtual environment. Issue 17's target: a warm hit <= 0.2x cashet's time.
# Results: bench-out/redis_vs_cashet.md
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/bench-out"
venv="$out/redis-bench"
mkdir -p "$out"
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
bash "$repo/benches/venv-with-wheel.sh" "$venv" "cashet[redis]"
"$venv/bin/pip" freeze | grep -Ei '^(cashet|redis)==' >"$out/redis_vs_cashet.versions"
work="$(mktemp -d "${TMPDIR:-/tmp}/tvredis.XXXXXX")"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$work" >/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
cd "$work"
REDIS_URL="redis://127.0.0.1:$port/0" "$venv/bin/python" "$repo/benches/redis_vs_cashet.py" |
    tee "$out/redis_vs_cashet.md"
echo; echo "versions:"; cat "$out/redis_vs_cashet.versions"
