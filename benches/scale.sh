#!/usr/bin/env bash
# Benchmark (not a test): every command on vaults of 1,000, 10,000, 100,000 and 1,000,000 entries, with
# diskcache (from PyPI, in the benchmark's own environment) beside it. Sizes can be given:
#   bash benches/scale.sh 1000 10000 100000 1000000
# Results: bench-out/scale.md
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/bench-out"
venv="$out/scale-venv"
mkdir -p "$out"
bash "$repo/benches/venv-with-wheel.sh" "$venv" diskcache
tv="$(bash "$repo/scripts/build-release.sh")"
tasks="$out/scale-tasks"
mkdir -p "$tasks"
printf 'def g(i):\n    return i * i\n' > "$tasks/scale_tasks.py"
# No TTL and no cap: the vault keeps all N entries.
printf 'max_size_gb: 0\npolicies:\n  default:\n    ttl_seconds: 0\n' > "$out/scale.yaml"
export TASKVAULT_CONFIG="$out/scale.yaml" TASKVAULT_BIN="$tv" PYTHONPATH="$tasks" SCALE_DIR="$out"
"$venv/bin/python" "$repo/benches/scale.py" "$@" | tee "$out/scale.md"
