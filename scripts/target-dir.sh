#!/usr/bin/env bash
# Prints cargo's target directory for this workspace, as cargo resolves it (CARGO_TARGET_DIR,
# relative or absolute, or build.target-dir in a cargo config, or target/).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
