#!/usr/bin/env bash
# The main job on the embedded default (SQLite + local blobs, no server): builds taskvault and
# runs the seed's quick start in a scratch project, showing a save, a hit, a miss and the stats.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tv="$(bash "$repo/scripts/build-release.sh")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
set -x
"$tv" init
head -c 5242880 /dev/urandom > model.pkl          # stands in for: python train_model.py ... > model.pkl
printf 'x,y\n1,2\n' > data.csv
"$tv" cache save train_model data.csv model.pkl --duration 2h
"$tv" cache get train_model data.csv model2.pkl
cmp model.pkl model2.pkl
"$tv" cache get other_task data.csv x.pkl || echo "miss: exit $?"
"$tv" cache stats
"$tv" log
