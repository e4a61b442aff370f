#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints, the Rust test suite, the Python SDK's pytest suite,
# schemathesis against a real `taskvault serve`, and the deploy/ manifests' schema check.
# Set TASKVAULT_CRASH_KILLS=200 for the slow crash tier (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
cargo test --doc --locked -p taskvault    # the README's Rust example, compiled
bash scripts/test-python.sh
bash scripts/test-schemathesis.sh     # the served OpenAPI document, fuzzed against a real server
bash scripts/test-deploy.sh           # deploy/: Kubernetes manifests against the API schemas
