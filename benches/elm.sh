#!/usr/bin/env bash
# Phase One of `haul elm migrate` (4 layers) against a plain `haul push` of the same layers,
# in the same run, release build, loopback QUIC. Prints both times and the ratio.
# LAYER_SIZE (default 1G) can be reduced to fit the time.
set -euo pipefail
LAYER_SIZE=${LAYER_SIZE:-1G}
cd "$(dirname "$0")/.."
cargo build --release -p haul >/dev/null
H=$PWD/target/release/haul
W=$(mktemp -d); trap 'kill $SP1 $SP2 2>/dev/null || true; rm -rf "$W"' EXIT
export HAUL_CONFIG_DIR=$W/cfg HAUL_STATE_DIR=$W/state
"$H" elm sample "$W/src" --layers 4 --layer-size "$LAYER_SIZE" --no-certificate >/dev/null
# Whole layers with data (not sparse), so both runs move the same bytes.
for f in "$W"/src/layers/*; do head -c "$(stat -c %s "$f")" /dev/urandom > "$f.tmp"; mv "$f.tmp" "$f"; done
printf 'bench-token-0123456789' > "$W/tok"; chmod 600 "$W/tok"
mkdir -p "$W/t1" "$W/t2"
"$H" serve --root "$W/t1" --listen 127.0.0.1:0 --token-file "$W/tok" > "$W/s1" 2>/dev/null & SP1=$!
"$H" serve --root "$W/t2" --listen 127.0.0.1:0 --token-file "$W/tok" > "$W/s2" 2>/dev/null & SP2=$!
sleep 1
A1=$(awk '{print $5}' "$W/s1"); F1=$(awk '{print $7}' "$W/s1")
A2=$(awk '{print $5}' "$W/s2"); F2=$(awk '{print $7}' "$W/s2")
sync; t0=$(date +%s.%N)
"$H" push "$W/src/layers" "quic://$A1/layers" --fingerprint "$F1" --token-file "$W/tok" >/dev/null
t1=$(date +%s.%N)
"$H" elm migrate --source "$W/src" --target "quic://$A2/" --mode copy --share //fs/bench \
    --fingerprint "$F2" --token-file "$W/tok" >"$W/elm.out" 2>&1 || { tail -5 "$W/elm.out"; exit 1; }
t2=$(date +%s.%N)
push=$(echo "$t1 - $t0" | bc -l); elm=$(echo "$t2 - $t1" | bc -l)
printf 'layers: 4 x %s\nplain push:          %.2f s\nelm Phase One:       %.2f s\nratio (elm/push):    %.3f\n' \
    "$LAYER_SIZE" "$push" "$elm" "$(echo "$elm / $push" | bc -l)"
