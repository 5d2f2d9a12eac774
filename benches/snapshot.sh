#!/usr/bin/env bash
# What a snapshot costs next to the cheapest things a file system can do with a tree: makes a
# tree of FILES small files (default 100,000: 100 directories of 1,000 files of 1 B-4 KiB, by
# seeded python) under a receiver root, then times, each after dropping the page cache:
#
#   (a) a stat walk:        find TREE -printf '%s\n' >/dev/null
#   (b) hard-link copy:     cp -al TREE COPY
#   (b+) the same and sync: cp -al TREE COPY && sync -f COPY   (a snapshot ends with syncfs)
#   (c) a snapshot:         haul snapshot create --json ROOT --path tree
#
# and prints the median wall time of REPS runs (default 3) of each, peak RSS, and haul's ratio
# to each. Every run is checked: the copy and the snapshot must hold FILES files, and the
# snapshot must report them (its `--json` files count and "complete": true).
#
#   benches/snapshot.sh [FILES] [REPS]      (as root: drop_caches, and tmpfs with HAUL_BENCH_TMPFS=1)
#
# The tree lives under $HAUL_BENCH_DIR (default /var/tmp/haul-snapshot), on the file system
# /var/tmp is on (ext4 here: hard-link snapshots), or on a tmpfs mounted there when
# HAUL_BENCH_TMPFS=1; it is removed at the end. The table goes to
# benches/results/snapshot-YYYYMMDD-HHMM.md.
set -euo pipefail
cd "$(dirname "$0")/.."

files=${1:-100000}
reps=${2:-3}
work=${HAUL_BENCH_DIR:-/var/tmp/haul-snapshot}
haul=$PWD/target/release/haul
[[ $(id -u) -eq 0 ]] || echo "snapshot.sh: not root: the page cache cannot be dropped" >&2
[[ -x /usr/bin/time ]] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
[[ -x $haul ]] || cargo build --release --quiet

mounted=
cleanup() {
    if [[ -n $mounted ]]; then
        umount "$work" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work"
if [[ ${HAUL_BENCH_TMPFS:-0} == 1 ]]; then
    mount -t tmpfs -o size=4g,nr_inodes=0 tmpfs "$work"
    mounted=1
fi
root=$work/root
tree=$root/tree
copy=$root/copy
mkdir -p "$root" "$work/cfg"
echo "snapshot.sh: making $files files under $tree" >&2
python3 - "$tree" "$files" <<'EOF'
import os, random, sys
root, files = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261204)
per_dir = 1000
for n in range(files):
    d = os.path.join(root, f"d{n // per_dir:03d}")
    if n % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{n % per_dir:04d}.dat"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1, 4096)))
EOF
sync

drop_caches() {
    sync
    if [[ $(id -u) -eq 0 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# Runs "$@" once with a cold cache (stdout in $work/out); sets w (wall seconds) and m (peak
# RSS in KiB).
timed() {
    drop_caches
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$work/rss" "$@" >"$work/out" 2>"$work/err" || {
        echo "snapshot.sh: failed: $*" >&2
        tail -5 "$work/err" >&2
        exit 1
    }
    t1=$(date +%s%N)
    w=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    m=$(tail -1 "$work/rss")
}

count_files() { find "$1" -type f | wc -l; }

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A walls rss
for name in walk cp cp_sync haul; do walls[$name]=; rss[$name]=0; done
record() { # name wall rss
    walls[$1]+="$2 "
    ((${3} > ${rss[$1]})) && rss[$1]=$3
    return 0
}

for rep in $(seq "$reps"); do
    echo "snapshot.sh: run $rep of $reps" >&2
    timed find "$tree" -printf '%s\n'
    record walk "$w" "$m"

    timed cp -al "$tree" "$copy"
    record cp "$w" "$m"
    [[ $(count_files "$copy") -eq $files ]] || { echo "snapshot.sh: cp -al copied the wrong count" >&2; exit 1; }
    rm -rf "$copy"

    timed sh -c 'cp -al "$1" "$2" && sync -f "$2"' sh "$tree" "$copy"
    record cp_sync "$w" "$m"
    rm -rf "$copy"

    timed env HAUL_CONFIG_DIR="$work/cfg" "$haul" snapshot create --json "$root" --path tree --label bench
    record haul "$w" "$m"
    id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' <"$work/out")
    read -r got complete method < <(python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["files"], s["complete"], s["method"])' <"$work/out")
    [[ $got -eq $files && $complete == True ]] || { echo "snapshot.sh: the snapshot says $got files, complete=$complete" >&2; exit 1; }
    [[ $(count_files "$root/.haul/snapshots/$id/tree") -eq $files ]] || { echo "snapshot.sh: the snapshot holds the wrong count" >&2; exit 1; }
    HAUL_CONFIG_DIR="$work/cfg" "$haul" snapshot delete "$root" "$id" >/dev/null
done

declare -A med
for name in walk cp cp_sync haul; do
    med[$name]=$(tr ' ' '\n' <<<"${walls[$name]}" | grep . | median)
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }'; }
fs=$(df -T "$root" | awk 'NR==2 {print $2}')
out="benches/results/snapshot-$(date -u +%Y%m%d-%H%M).md"
{
    echo "# Snapshot of $files small files, $(date -u '+%F %R') UTC"
    echo
    echo "haul $(git rev-parse --short HEAD), $(nproc) cores, $root ($fs), method $method, median of $reps cold-cache runs"
    echo
    echo "| what | command | wall s | haul / this | peak RSS MiB |"
    echo "|---|---|--:|--:|--:|"
    row() { # name label command
        printf '| %s | `%s` | %s | %s | %d |\n' "$2" "$3" "${med[$1]}" \
            "$(ratio "${med[haul]}" "${med[$1]}")" $((${rss[$1]} / 1024))
    }
    row walk "(a) stat walk" "find TREE -printf '%s\\n'"
    row cp "(b) hard-link copy" "cp -al TREE COPY"
    row cp_sync "(b+) hard-link copy, flushed" "cp -al TREE COPY && sync -f COPY"
    row haul "(c) haul snapshot" "haul snapshot create ROOT --path tree"
} | tee "$out"
echo "snapshot.sh: written to $out" >&2
