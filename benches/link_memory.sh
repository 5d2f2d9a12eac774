#!/usr/bin/env bash
# Sender memory with many hard links: pushes FILES small files (default 1,000,000), of which
# LINKED (default 100,000) are in link groups of two, to a `haul serve` on loopback, and reports
# the peak RSS of both processes next to a push of the same tree with --no-hard-links (where
# the sender keeps no link table). The sender's table holds only multiply-linked files, so the
# two should differ by little.
#
#   benches/link_memory.sh [FILES] [LINKED]
#
# The trees live on a tmpfs mounted under $HAUL_BENCH_DIR (default /var/tmp/haul-links) and
# are removed at the end. Needs root (mount).
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-1000000}
linked=${2:-100000}
work=${HAUL_BENCH_DIR:-/var/tmp/haul-links}
haul=$PWD/target/release/haul
[[ -x $haul ]] || cargo build --release --quiet
[[ -x /usr/bin/time ]] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null

mkdir -p "$work"
mount -t tmpfs -o size=16g,nr_inodes=0 tmpfs "$work"
cleanup() {
    [[ -n ${server:-} ]] && { pkill -P "$server" 2>/dev/null; kill "$server" 2>/dev/null; } || true
    umount "$work" 2>/dev/null || true
}
trap cleanup EXIT
mkdir -p "$work/src" "$work/root" "$work/cfg"
echo "link_memory.sh: making $files files ($linked in pairs of links) under $work/src" >&2
python3 - "$work/src" "$files" "$linked" <<'EOF'
import os, sys
root, files, linked = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_dir = 1000
n = 0
while n < files:
    d = os.path.join(root, f"d{n // per_dir:05d}")
    os.makedirs(d, exist_ok=True)
    for i in range(min(per_dir, files - n)):
        p = os.path.join(d, f"f{i:04d}")
        if n < linked and n % 2 == 1:
            # The second name of the pair: the previous file's.
            prev = os.path.join(root, f"d{(n - 1) // per_dir:05d}", f"f{(n - 1) % per_dir:04d}")
            os.link(prev, p)
        else:
            with open(p, "wb") as f:
                f.write(b"x" * (n % 97 + 1))
        n += 1
EOF
echo "secret-token" >"$work/token"
chmod 600 "$work/token"
run() { # label, extra push args
    local label=$1
    shift
    rm -rf "$work/root"/* "$work/cfg"/*
    HAUL_CONFIG_DIR="$work/cfg/s" /usr/bin/time -f '%M' -o "$work/serve.rss" \
        "$haul" serve --root "$work/root" --listen 127.0.0.1:0 --token-file "$work/token" \
        >"$work/serve.out" 2>"$work/serve.err" &
    server=$!
    for _ in $(seq 100); do grep -q fingerprint "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
    local addr fp
    addr=$(awk '{for (i = 1; i < NF; i++) if ($i == "on") print $(i + 1)}' "$work/serve.out")
    fp=$(awk '{for (i = 1; i < NF; i++) if ($i == "fingerprint") print $(i + 1)}' "$work/serve.out")
    HAUL_CONFIG_DIR="$work/cfg/c" /usr/bin/time -f '%e %M' -o "$work/push.time" \
        "$haul" push --json "$@" --fingerprint "$fp" --token-file "$work/token" \
        "$work/src" "quic://$addr/copy" >"$work/push.json"
    # $server is /usr/bin/time; the receiver is its child.
    pkill -INT -P "$server" 2>/dev/null || kill -INT "$server"
    wait "$server" 2>/dev/null || true
    server=
    read -r wall push_rss <"$work/push.time"
    local links
    links=$(grep -o '"hard_links":[0-9]*' "$work/push.json" | cut -d: -f2)
    printf '| %s | %s | %d | %d | %s |\n' "$label" "$wall" $((push_rss / 1024)) \
        $(($(cat "$work/serve.rss") / 1024)) "$links"
}
echo "| run | wall s | push peak RSS MiB | serve peak RSS MiB | hard links sent as links |"
echo "|---|--:|--:|--:|--:|"
run "default (hard links)"
run "--no-hard-links" --no-hard-links
