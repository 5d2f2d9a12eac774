#!/usr/bin/env bash
# Copies a real system tree (default /usr) three ways, side by side in one run: `haul copy`,
# `rsync -aHAX --numeric-ids` and `cp -a`. Reports wall time, the ratio to each peer and peak
# RSS, then checks every result the way an administrator would: `rsync -naicHAX --numeric-ids
# SRC/ DST/` must print nothing, and `du` must equal the source's.
#
#   benches/system_tree.sh [SRC]        (as root, so owners, devices and capabilities copy)
#
# The copies go under $HAUL_BENCH_DIR (default /var/tmp/haul-system-tree), on one file system,
# and are removed at the end. The page cache is dropped before each copy when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

src=${1:-/usr}
src=${src%/}
work=${HAUL_BENCH_DIR:-/var/tmp/haul-system-tree}
[[ -d $src ]] || { echo "system_tree.sh: $src is not a directory" >&2; exit 1; }

need=()
command -v rsync >/dev/null || need+=(rsync)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
    echo "system_tree.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
haul=target/release/haul
[[ -x $haul ]] || cargo build --release --quiet

rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

drop_caches() {
    sync
    if [[ $(id -u) -eq 0 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

declare -A wall rss lines du_dst
run() { # name dst command...
    local name=$1 dst=$2
    shift 2
    drop_caches
    local t="$work/$name.time"
    /usr/bin/time -f '%e %M' -o "$t" "$@" >/dev/null 2>"$work/$name.err" || {
        echo "system_tree.sh: $name failed:" >&2
        tail -5 "$work/$name.err" >&2
    }
    sync
    read -r wall[$name] rss[$name] <"$t"
    lines[$name]=$(rsync -naicHAX --numeric-ids "$src/" "$dst/" | wc -l)
    du_dst[$name]=$(du -sB1 "$dst" | cut -f1)
    rm -rf "$dst"
}

run haul "$work/haul" "$haul" copy "$src" "$work/haul"
run rsync "$work/rsync" rsync -aHAX --numeric-ids "$src/" "$work/rsync/"
run cp "$work/cp" cp -a "$src" "$work/cp"
du_src=$(du -sB1 "$src" | cut -f1)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }'; }
files=$(find "$src" -xdev | wc -l)
out="benches/results/system-tree-$(date -u +%Y%m%d-%H%M).md"
{
    echo "# System tree copy: $src ($files entries, $(numfmt --to=iec "$du_src")), $(date -u '+%F %R') UTC"
    echo
    echo "haul $(git rev-parse --short HEAD), $(nproc) cores, destination $work ($(df -T "$work" | awk 'NR==2 {print $2}'))"
    echo
    echo "| tool | wall s | / rsync | / cp -a | peak RSS MiB | rsync -naicHAX lines | du / source |"
    echo "|---|--:|--:|--:|--:|--:|--:|"
    for name in haul rsync cp; do
        printf '| %s | %s | %s | %s | %d | %s | %s |\n' "$name" "${wall[$name]}" \
            "$(ratio "${wall[$name]}" "${wall[rsync]}")" "$(ratio "${wall[$name]}" "${wall[cp]}")" \
            $((${rss[$name]} / 1024)) "${lines[$name]}" "$(ratio "${du_dst[$name]}" "$du_src")"
    done
} | tee "$out"
echo "system_tree.sh: written to $out" >&2
