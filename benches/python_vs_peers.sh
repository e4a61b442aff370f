#!/usr/bin/env bash
# Benchmark (not a test): the Python SDK vs cashet, joblib.Memory and diskcache, in one run.
# Peers come from PyPI into bench-out/py-bench (the benchmark's own virtual environment).
# Results: bench-out/python_vs_peers.md
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/bench-out"
venv="$out/py-bench"
mkdir -p "$out"
bash "$repo/benches/venv-with-wheel.sh" "$venv" cashet joblib diskcache
"$venv/bin/pip" freeze | grep -Ei '^(cashet|joblib|diskcache)==' > "$out/python_vs_peers.versions"
cd "$out"
# No size limits: the default policy refuses entries over 100 MiB, and one scenario stores 100 MiB.
printf 'max_size_gb: 0\npolicies:\n  default:\n    max_size_bytes: 0\n' > "$out/py-bench.yaml"
export TASKVAULT_CONFIG="$out/py-bench.yaml"
"$venv/bin/python" "$repo/benches/python_vs_peers.py" | tee "$out/python_vs_peers.md"
echo; echo "versions:"; cat "$out/python_vs_peers.versions"
