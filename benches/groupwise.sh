#!/usr/bin/env bash
# What the post office workflow adds to a transfer: `haul groupwise premigrate` (step 1: the
# BLOBs of the newest backup) against a plain `haul push` of the same offiles/, both to one
# `haul serve` on loopback, each into an empty tree, in the same run. Prints both wall times,
# bytes sent and the ratio (the issue's bar: premigrate <= 1.05x push).
#
#   benches/groupwise.sh [BLOBS] [SIZE]     (default 1000000 BLOBs in 8G: 8 KiB on average)
#
# The sample lives under $HAUL_BENCH_DIR (default /var/tmp/haul-groupwise) and is removed at
# the end. The page cache is dropped before each run when running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

blobs=${1:-1000000}
size=${2:-8G}
work=${HAUL_BENCH_DIR:-/var/tmp/haul-groupwise}
haul=$PWD/target/release/haul
[[ -x $haul ]] || cargo build --release --quiet -p haul

rm -rf "$work"
mkdir -p "$work"/{root,config,state}
server=
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export HAUL_CONFIG_DIR=$work/config HAUL_STATE_DIR=$work/state HAUL_CACHE_DIR=$work/config/cache
head -c 32 /dev/urandom | base64 >"$work/token"
chmod 600 "$work/token"

echo "groupwise.sh: making a sample of $blobs BLOBs ($size)..." >&2
"$haul" groupwise sample "$work/backups" --backups 1 --blobs "$blobs" --size "$size" >&2
tag=$(ls "$work/backups")
offiles=$work/backups/$tag/po1/offiles
files=$(find "$offiles" -type f | wc -l)
bytes=$(du -sb "$offiles" | cut -f1)

"$haul" serve --root "$work/root" --listen 127.0.0.1:0 --token-file "$work/token" \
    --config-dir "$work/serve-config" >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q fingerprint "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
addr=$(awk '{print $5}' "$work/serve.out")
fp=$(awk '{print $7}' "$work/serve.out")
access=(--fingerprint "$fp" --token-file "$work/token")

drop() { [[ $(id -u) -eq 0 ]] && sync && echo 3 >/proc/sys/vm/drop_caches || true; }
now() { date +%s.%N; }
sent() { python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"summary\"" in l][-1]["bytes_sent"])'; }

drop
t0=$(now)
push_sent=$("$haul" push "$offiles" "quic://$addr/plain/po1/offiles" "${access[@]}" --json | sent)
t1=$(now)

"$haul" groupwise profile add bench --backups "$work/backups" --target "quic://$addr/gw/po1" \
    "${access[@]}" >/dev/null
drop
t2=$(now)
pre_sent=$("$haul" groupwise premigrate bench --json | sent)
t3=$(now)

python3 - "$files" "$bytes" "$t0" "$t1" "$t2" "$t3" "$push_sent" "$pre_sent" <<'PY'
import sys
files, size = int(sys.argv[1]), int(sys.argv[2])
t0, t1, t2, t3 = map(float, sys.argv[3:7])
push_sent, pre_sent = int(sys.argv[7]), int(sys.argv[8])
push, pre = t1 - t0, t3 - t2
print(f"offiles/: {files} BLOBs, {size / 2**20:.1f} MiB")
print(f"plain push:          {push:8.2f} s  {push_sent / 2**20:9.1f} MiB sent  {files / push:9.0f} files/s")
print(f"groupwise premigrate:{pre:8.2f} s  {pre_sent / 2**20:9.1f} MiB sent  {files / pre:9.0f} files/s")
print(f"ratio premigrate/push: {pre / push:.3f}  (bar: <= 1.05)")
PY
