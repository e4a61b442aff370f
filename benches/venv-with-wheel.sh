#!/usr/bin/env bash
# A benchmark's own virtual environment with the TaskVault wheel built from this tree and the
# given PyPI packages installed:  bash benches/venv-with-wheel.sh VENV PACKAGE...
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(realpath -m "$1")"
shift
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.16,<2" "$@"
wheels="$venv/wheels"
rm -rf "$wheels"
(cd "$repo/crates/taskvault-py" && "$venv/bin/maturin" build --release --locked --quiet -o "$wheels")
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/taskvault-*.whl
