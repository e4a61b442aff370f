#!/usr/bin/env bash
# Schemathesis (PyPI) against the OpenAPI document a real `taskvault serve` serves: every
# operation is fuzzed, and the run fails on any 5xx or any response that contradicts the
# document (status, content type, headers, body schema), on requests the document calls invalid
# being accepted, and on auth that is ignored.
# Excluded: `positive_data_acceptance`, which expects every schema-valid request to succeed; a
# blob must hash to its digest and an entry must answer its key, which no schema can say.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/target/st-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"
cargo build --locked --quiet --manifest-path "$repo/Cargo.toml" -p taskvault-cli
bin="$(bash "$repo/scripts/target-dir.sh")/debug/taskvault"
work="$(mktemp -d)"
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
token="$("$bin" --dir "$work/vault" token create --scope admin --namespace '*' 2>/dev/null)"
TASKVAULT_LOG=warn "$bin" --dir "$work/vault" serve --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 100); do
    grep -q "^listening on" "$work/out" 2>/dev/null && break
    sleep 0.05
done
url="$(sed -n 's/^listening on //p' "$work/out")"
[ -n "$url" ] || { cat "$work/err"; exit 1; }
cd "$repo/scripts"
"$venv/bin/schemathesis" --config-file "$repo/scripts/schemathesis.toml" run "$url/v1/openapi.json" \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" --workers 1 --seed 1 \
    -H "Authorization: Bearer $token"
