#!/usr/bin/env bash
# The Python SDK's suite: builds the wheel with maturin into a virtual environment under
# target/, installs it with the test dependencies (pytest, numpy, pandas, dask's distributed),
# and runs pytest.
# The CLI tests use target/debug/taskvault, which `cargo nextest` (scripts/test.sh) builds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/target/py-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.16,<2" "pytest>=8" numpy pandas distributed
rm -rf "$repo/target/wheels"
(cd "$repo/crates/taskvault-py" && "$venv/bin/maturin" build --release --locked --quiet -o "$repo/target/wheels")
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$repo"/target/wheels/taskvault-*.whl
cargo build --locked --quiet --manifest-path "$repo/Cargo.toml" -p taskvault-cli
# Wherever cargo put it (CARGO_TARGET_DIR, even relative, or a cargo config's target-dir).
target_dir="$(bash "$repo/scripts/target-dir.sh")"
export TASKVAULT_BIN="$target_dir/debug/taskvault"
# From the tests directory, so `import taskvault` finds the installed wheel, not the sources.
cd "$repo/crates/taskvault-py/tests"
"$venv/bin/python" -m pytest -q -p no:cacheprovider
