#!/usr/bin/env bash
# Benchmark tier (not part of CI): cashet 0.5.0's own test suite run against TaskVault through
# an alias package (benches/cashet_alias: cashet's public names mapped onto TaskVault's, the
# rest stand-ins that raise). The sdist comes from PyPI; the run has a virtual environment of
# its own. Prints the pass count of the tests of public behaviour and lists every failure
# (benches/cashet_suite.py says which tests are excluded, and why).
# Results: bench-out/cashet_suite.txt
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/bench-out"
venv="$out/cashet-suite-venv"
work="$out/cashet-suite"
version="${CASHET_VERSION:-0.5.0}"
mkdir -p "$out"
# What cashet's tests import besides cashet (collection needs them even for excluded files).
bash "$repo/benches/venv-with-wheel.sh" "$venv" pytest pytest-asyncio httpx starlette click redis freezegun
rm -rf "$work" && mkdir -p "$work"
"$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$work" "cashet==$version"
tar -xzf "$work"/cashet-"$version".tar.gz -C "$work"
src="$work/cashet-$version"
# cashet's pytest config puts src/ on sys.path: the alias takes the place of the real package.
rm -rf "$src/src/cashet"
cp -r "$repo/benches/cashet_alias/cashet" "$src/src/cashet"
cd "$src"
# Each test in a fresh directory of its own (cashet's fixtures make their vaults under tmp_path);
# no vault config from the environment.
unset TASKVAULT_DIR TASKVAULT_CONFIG CASHET_DIR
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider --junitxml="$work/junit.xml" tests > "$work/pytest.log" 2>&1
set -e
"$venv/bin/python" "$repo/benches/cashet_suite.py" report "$src/tests" "$work/junit.xml" | tee "$out/cashet_suite.txt"
echo "(pytest's own output: $work/pytest.log)"
