#!/usr/bin/env bash
# Re-run costs: a no-change re-run of many small files, haul next to rsync, in one run.
#
# usage: benches/rerun.sh [--files N] [--reps N] [--no-build]
#
# Generates N files (default 100,000) of 0-8 KiB in N/100 directories (seeded), copies
# them once with each tool, then times no-change re-runs (best of --reps, default 3):
#   rsync -a to an rsync daemon on loopback, haul copy (embedded receiver), haul push to a
#   running haul serve. Prints a markdown table and writes it to benches/results/rerun-latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=100000 REPS=3 BUILD=1
while (($#)); do
    case $1 in
        --files) FILES=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
((BUILD)) && cargo build --release -q
HAUL=$PWD/target/release/haul
WORK=${HAUL_BENCH_DIR:-$PWD/benches/work}/rerun-$FILES
mkdir -p "$WORK"
SRC=$WORK/src

if [[ ! -f $WORK/.generated ]]; then
    echo "[rerun] generating $FILES files in $SRC" >&2
    python3 - "$SRC" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
dirs = max(1, n // 100)
for d in range(dirs):
    os.makedirs(os.path.join(root, f"fd{d:x}"), exist_ok=True)
for i in range(n):
    size = rng.randint(0, 8192)
    with open(os.path.join(root, f"fd{i % dirs:x}", f"blob{i}"), "wb") as f:
        f.write(rng.randbytes(size))
PY
    touch "$WORK/.generated"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# rsync daemon
RPORT=$((20000 + RANDOM % 20000))
mkdir -p "$WORK/rsync-dst"
cat > "$WORK/rsyncd.conf" <<CONF
pid file = $WORK/rsyncd.pid
use chroot = no
[bench]
path = $WORK/rsync-dst
read only = no
uid = root
gid = root
CONF
rsync --daemon --no-detach --port "$RPORT" --config "$WORK/rsyncd.conf" &
pids+=($!)
sleep 0.5

# haul serve
rm -rf "$WORK/serve-root" && mkdir -p "$WORK/serve-root"
echo "bench-token" > "$WORK/token"
HPORT=$((20000 + RANDOM % 20000))
"$HAUL" serve --root "$WORK/serve-root" --listen "127.0.0.1:$HPORT" --token-file "$WORK/token" \
    --config-dir "$WORK/serve-cfg" > "$WORK/serve.out" 2>"$WORK/serve.err" &
pids+=($!)
for _ in $(seq 50); do [[ -s $WORK/serve.out ]] && break; sleep 0.1; done
FP=$(awk '{print $NF}' "$WORK/serve.out")

rsync_cmd() { rsync -a "$SRC/" "rsync://127.0.0.1:$RPORT/bench/"; }
copy_cmd() { "$HAUL" copy --json "$SRC" "$WORK/copy-dst" > "$WORK/last.json"; }
push_cmd() {
    HAUL_CONFIG_DIR=$WORK/client-cfg "$HAUL" push --json "$SRC" "quic://127.0.0.1:$HPORT/po1" \
        --fingerprint "$FP" --token-file "$WORK/token" > "$WORK/last.json"
}

echo "[rerun] initial copies" >&2
rsync_cmd; copy_cmd; push_cmd

best() { # name command: best wall time of REPS runs, in seconds
    local best=999999 t
    for _ in $(seq "$REPS"); do
        t=$( { /usr/bin/env time -f '%e' bash -c "$(declare -f "$2"); $(declare -p SRC WORK HAUL RPORT HPORT FP); $2" ; } 2>&1 >/dev/null | tail -1)
        best=$(python3 -c "print(min($best, $t))")
    done
    echo "$best"
}

r=$(best rsync rsync_cmd)
c=$(best copy copy_cmd)
c_sent=$(python3 -c "import json,sys; print([json.loads(l) for l in open('$WORK/last.json')][-1]['bytes_sent'])")
p=$(best push push_cmd)
p_sent=$(python3 -c "import json,sys; print([json.loads(l) for l in open('$WORK/last.json')][-1]['bytes_sent'])")

{
    echo "# no-change re-run of $FILES files ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, best of $REPS)"
    echo
    echo "| tool | re-run wall time (s) | file bytes sent | ratio to rsync daemon |"
    echo "|---|--:|--:|--:|"
    echo "| rsync -a to rsync daemon | $r | - | 1.00 |"
    echo "| haul copy | $c | $c_sent | $(python3 -c "print(f'{$c/$r:.2f}')") |"
    echo "| haul push to haul serve | $p | $p_sent | $(python3 -c "print(f'{$p/$r:.2f}')") |"
} | tee benches/results/rerun-latest.md
