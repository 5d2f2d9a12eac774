#!/usr/bin/env bash
# Side-by-side benchmark of haul next to cp, rsync (daemon and over ssh) and tar over ssh,
# all on loopback on this machine, with a PASS/MISS line per performance target.
# See benches/README.md for what each set measures and what the numbers mean.
#
# usage: benches/compare.sh [--quick] [--no-build] [--only SET[,SET...]] [--reps N] [--fs loop|here]
#
#   --quick          scaled-down data sets, 1 repetition: a few minutes (CI)
#   --no-build       do not run `cargo build --release` (the binary must exist)
#   --only SETS      comma-separated sets to run [all]: big small many rerun delta sparse resume wan
#   --reps N         repetitions per tool; the best (shortest) run counts [3; --quick: 1;
#                    the heavy full-size `many` set runs once unless --reps is given]
#   --fs loop|here   where data and copies live [loop]: `loop` makes a journaled ext4 in a
#                    sparse image file (loop device, direct I/O) and mounts it under the
#                    work dir; `here` uses the work dir's own file system as it is
#
# Environment: HAUL_BENCH_DIR (work dir, default benches/work, git-ignored),
# HAUL_BIN (the haul binary, default target/release/haul), LINKEMU_BIN (the WAN emulator,
# default target/release/haul-linkemu).
#
# Runs as root (it starts a throwaway sshd and rsync daemon on loopback ports, and installs
# missing tools with apt-get). Everything it starts is killed on exit.
set -euo pipefail

usage() { sed -n '6,19p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[compare] error: %s\n' "$*" >&2; exit 1; }

ALL_SETS=(big small many rerun delta sparse resume wan)
parse_only() {
    local s
    IFS=, read -r -a ONLY <<<"$1"
    ((${#ONLY[@]})) || die "--only takes a comma-separated list of sets: ${ALL_SETS[*]}"
    for s in "${ONLY[@]}"; do
        [[ " ${ALL_SETS[*]} " == *" $s "* ]] || die "unknown set '$s'; sets: ${ALL_SETS[*]}"
    done
}

QUICK=0 BUILD=1 REPS="" ONLY=() FS=loop
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --fs) FS=${2:-}; shift ;;
        --fs=*) FS=${1#--fs=} ;;
        --only) parse_only "${2:-}"; shift ;;
        --only=*) parse_only "${1#--only=}" ;;
        --reps) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive number"; REPS=$2; shift ;;
        --reps=*) REPS=${1#--reps=}; [[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive number" ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
[[ $FS == loop || $FS == here ]] || die "--fs takes loop or here, not '$FS'"

MiB=$((1 << 20)) GiB=$((1 << 30))
# haul's default chunk is 4 MiB: the delta and sparse layouts and the quick sizes assume it.
DELTA_CHANGE=$((3 * MiB))
if ((QUICK)); then
    MODE=quick MANY_REPS=${REPS:-1} REPS=${REPS:-1}
    BIG_BYTES=$((256 * MiB)) SMALL_FILES=2000
    MANY_FILES=20000 MANY_FLAT_FILES=2000 RERUN_FILES=10000
    DELTA_BYTES=$((64 * MiB)) DELTA_OFFSET=$((30 * MiB + MiB / 2))
    SPARSE_BYTES=$((1 * GiB)) SPARSE_EXTENTS=4
    RESUME_BYTES=$((512 * MiB)) WAN_BYTES=$((64 * MiB))
else
    MODE=full MANY_REPS=${REPS:-1} REPS=${REPS:-3}
    BIG_BYTES=$((2 * GiB)) SMALL_FILES=20000
    MANY_FILES=1000000 MANY_FLAT_FILES=100000 RERUN_FILES=100000
    DELTA_BYTES=$((1 * GiB)) DELTA_OFFSET=$((301 * MiB + MiB / 2))
    SPARSE_BYTES=$((10 * GiB)) SPARSE_EXTENTS=25
    RESUME_BYTES=$((4 * GiB)) WAN_BYTES=$((2 * GiB))
fi
# The emulated WAN: 1 Gbit/s, 40 ms round trip, 0.1% random loss each way, and a drop-tail
# queue of two bandwidth-delay products (10 MB), as a router sized for such a path would have.
WAN_RATE_MBIT=1000 WAN_DELAY=20ms WAN_LOSS=0.1% WAN_QUEUE=10MB
WAN_DESC="1 Gbit/s, 40 ms RTT, 0.1% loss (haul-linkemu)"
SETS=("${ALL_SETS[@]}")
((${#ONLY[@]})) && SETS=("${ONLY[@]}")
want() { [[ " ${SETS[*]} " == *" $1 "* ]]; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${HAUL_BENCH_DIR:-$REPO/benches/work}
RESULTS=$REPO/benches/results
HAUL=${HAUL_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/haul}
[[ $WORK == /* ]] || WORK=$PWD/$WORK
# rsync -e and the remote tar command split on whitespace.
[[ $WORK != *[[:space:]]* ]] || die "the work dir must not contain spaces: $WORK"
((EUID == 0)) || die "run as root: it starts sshd and an rsync daemon with uid=root"

# --- 1. tools and build -----------------------------------------------------------------
missing=()
command -v rsync >/dev/null || missing+=(rsync)
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
{ command -v ssh && command -v ssh-keygen; } >/dev/null || missing+=(openssh-client)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ((BUILD)); then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet && cargo build --release --quiet -p haul-testing --bin haul-linkemu)
fi
LINKEMU=${LINKEMU_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/haul-linkemu}
if [[ " ${SETS[*]} " == *" wan "* && ! -x $LINKEMU ]]; then
    die "no haul-linkemu at $LINKEMU; build it: cargo build --release -p haul-testing --bin haul-linkemu"
fi
# The binary may be replaced by a rebuild at any moment on a shared machine: wait a little.
for _ in {1..60}; do [[ -x $HAUL ]] && break; sleep 5; done
[[ -x $HAUL ]] || die "no haul binary at $HAUL; build it (drop --no-build) or set HAUL_BIN"

# --- the file system under test ------------------------------------------------------------
# By default every data set and copy lives on a journaled ext4 made for the benchmark: a
# sparse image file on a loop device with direct I/O (no double caching), mounted at
# $WORK/fs. This is what an administrator's target looks like (mkfs.ext4's defaults), and it
# keeps one quirk of the VM's root file system out of the numbers: that one has no journal,
# and ext4 without a journal skips every inode freed in the last 60-300 s when it allocates
# a new one. Each benchmark run deletes the previous tool's copy, so whichever tool runs next
# paid for the deletion (cp -a of 20,000 files: 1.1 s fresh, 6-13 s right after an rm -rf).
# The image is kept between runs, with its data sets; `--fs here` skips all of this.
FS_NOTE="file system: the work dir's own ($(findmnt -n -o FSTYPE,OPTIONS --target "$WORK" 2>/dev/null || echo unknown))"
if [[ $FS == loop ]]; then
    command -v mkfs.ext4 >/dev/null || die "--fs loop needs mkfs.ext4 (e2fsprogs); or use --fs here"
    mkdir -p "$WORK/fs"
    if ! mountpoint -q "$WORK/fs"; then
        IMG=$WORK/fs.img
        if [[ ! -f $IMG ]]; then
            # Never larger than what the host has free: a sparse image that outgrows its disk
            # turns the benchmark's file system read-only mid-run.
            free_gib=$(($(df --output=avail -B1G "$WORK" | tail -n1) - 4))
            img_gib=$((free_gib < 96 ? free_gib : 96))
            ((img_gib >= 8)) || die "$WORK has only $((free_gib + 4)) GiB free: not enough for the benchmark image"
            log "making a journaled ext4 image for the benchmark in $IMG (sparse, $img_gib GiB apparent)"
            truncate -s "${img_gib}G" "$IMG"
            mkfs.ext4 -q -F -L haul-bench "$IMG"
        fi
        LOOPDEV=$(losetup --find --show --direct-io=on "$IMG") || die "losetup failed for $IMG"
        # discard: a deleted copy's blocks are punched out of the image at once, so the image
        # holds what the file system holds, not every block any run ever wrote.
        mount -o discard "$LOOPDEV" "$WORK/fs" || { losetup -d "$LOOPDEV"; die "cannot mount $IMG"; }
        UNMOUNT_FS=$WORK/fs
    fi
    WORK=$WORK/fs
    FS_NOTE="file system: a journaled ext4 (mkfs.ext4 defaults) on a loop device with direct I/O, in a sparse image file; sources and copies both on it"
fi

mkdir -p "$WORK"/{data,dst,logs,ssh,rsyncd,serve} "$RESULTS"
RUN_ID=$(date +%Y%m%d-%H%M%S)
RAW=$WORK/logs/raw-$RUN_ID.tsv         # set tool rep wall_us sync_us rss_kib
METRICS=$WORK/logs/metrics-$RUN_ID.tsv # set tool key value (bytes sent, chunks, du, ...)
: >"$RAW"
: >"$METRICS"
metric() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$METRICS"; }

# --- background processes, killed on exit ------------------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    # Leave the data sets for the next run; the copies are only big.
    rm -rf "$WORK/dst" "$WORK/serve"
    if [[ -n ${UNMOUNT_FS:-} ]]; then
        cd / && umount "$UNMOUNT_FS" && losetup -d "$LOOPDEV" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # tcp|udp: a loopback port nobody listens on right now
    python3 -c 'import socket,sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}

wait_until() { # seconds what command...: retries the command until it succeeds
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up in time"
        sleep 0.2
    done
}

# --- 2. data sets -----------------------------------------------------------------------
# Deterministic: the same parameters give the same bytes, so every run (and every machine)
# copies the same data. A data set is reused when its .meta file ("bytes files [data]")
# exists; it is written last, so an interrupted generation is redone.
gen_data() { # kind dir param...
    python3 - "$@" <<'PY'
import hashlib, os, random, shutil, sys
kind, out, params = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
tmp = out + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
MiB = 1 << 20

def stream(path, size, seed, patch=None):
    # Incompressible bytes, SHAKE-256 per 8 MiB block (~4x faster than Random.randbytes).
    # patch = (offset, bytes) overwrites a range, for the delta set's new version.
    block, done, i = 8 * MiB, 0, 0
    with open(path, "wb") as f:
        while done < size:
            n = min(block, size - done)
            f.write(hashlib.shake_256(b"%s/%d" % (seed, i)).digest(n))
            done += n
            i += 1
        if patch:
            f.seek(patch[0])
            f.write(patch[1])

extra = ""
if kind == "big":
    # One file (the big and resume sets).
    total, files = params[0], 1
    stream(os.path.join(tmp, "big.bin"), total, b"haul-bench-big")
elif kind == "small":
    # param files of 1-16 KiB spread over 100 directories.
    rng = random.Random(20240611)
    dirs = [os.path.join(tmp, "d%02d" % d) for d in range(100)]
    for d in dirs:
        os.makedirs(d)
    total = files = 0
    for i in range(params[0]):
        data = rng.randbytes(rng.randint(1024, 16384))
        with open(os.path.join(dirs[i % 100], "f%05d.bin" % i), "wb") as f:
            f.write(data)
        total += len(data)
    files = params[0]
elif kind == "many":
    # A GroupWise-like offiles/ tree: fd0..fdNN directories (~333 files each) of BLOB files
    # with 8-hex-digit names, 0-8 KiB each. One process, raw os.open/os.write relative to a
    # directory fd: a million files take a few minutes, most of it in the file system.
    n = files = params[0]
    ndirs = max(1, round(n / 333))
    rng = random.Random("haul-bench-many/%d" % n)
    base = os.path.join(tmp, "offiles")
    os.makedirs(base)
    dfds = []
    for d in range(ndirs):
        os.mkdir(os.path.join(base, "fd%x" % d))
        dfds.append(os.open(os.path.join(base, "fd%x" % d), os.O_RDONLY | os.O_DIRECTORY))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    total = 0
    for i in range(n):
        # Multiplying by an odd constant is a bijection mod 2^32: names never collide.
        name = "%08x.000" % ((i * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF)
        data = rng.randbytes(rng.randint(0, 8192))
        fd = os.open(name, flags, 0o644, dir_fd=dfds[i % ndirs])
        os.write(fd, data)
        os.close(fd)
        total += len(data)
        if i and i % 100000 == 0:
            print(f"[compare] generated {i:,} of {n:,} files", file=sys.stderr, flush=True)
    for fd in dfds:
        os.close(fd)
elif kind == "delta":
    # old/delta.bin and new/delta.bin: equal but for DELTA_CHANGE bytes at DELTA_OFFSET (not
    # chunk-aligned, so the change straddles a 4 MiB chunk boundary: 2 chunks differ).
    size, off, change = params
    total, files = size, 1
    for d in ("old", "new"):
        os.makedirs(os.path.join(tmp, d))
    stream(os.path.join(tmp, "old", "delta.bin"), size, b"haul-bench-delta")
    stream(os.path.join(tmp, "new", "delta.bin"), size, b"haul-bench-delta",
           (off, hashlib.shake_256(b"haul-bench-delta-change").digest(change)))
    # Distinct fixed mtimes: every tool's size+mtime quick check sees the file as changed.
    os.utime(os.path.join(tmp, "old", "delta.bin"), (1700000000, 1700000000))
    os.utime(os.path.join(tmp, "new", "delta.bin"), (1700003600, 1700003600))
    for d in ("old", "new"):
        os.utime(os.path.join(tmp, d), (1700000000, 1700000000))
elif kind == "sparse":
    # A sparse file (truncate, then data written at offsets as dd conv=notrunc would) with
    # `extents` extents of 4 MiB spread evenly. Each starts 1 MiB past a 4 MiB boundary, as
    # real sparse files (VM images, databases) do not line up with haul's chunks: each
    # extent touches two chunks.
    size, extents = params
    path = os.path.join(tmp, "sparse.bin")
    with open(path, "wb") as f:
        f.truncate(size)
        for k in range(extents):
            off = (size * k // extents) // (4 * MiB) * (4 * MiB) + MiB
            f.seek(off)
            f.write(hashlib.shake_256(b"haul-bench-sparse/%d" % k).digest(4 * MiB))
    os.utime(path, (1700000000, 1700000000))
    total, files = size, 1
    extra = " %d" % (extents * 4 * MiB)
else:
    sys.exit("unknown data set kind " + kind)
os.sync()
os.rename(tmp, out)
with open(out + ".meta", "w") as m:
    m.write(f"{total} {files}{extra}\n")
PY
}

declare -A SRC BYTES FILES DATA
dataset() { # key kind dir param...: generates the set once, then reads its .meta
    local key=$1 kind=$2 dir=$WORK/data/$3; shift 3
    if [[ ! -f $dir.meta ]]; then
        log "generating the $key data set in $dir"
        rm -rf "$dir"
        gen_data "$kind" "$dir" "$@"
    fi
    read -r "BYTES[$key]" "FILES[$key]" "DATA[$key]" <"$dir.meta"
    SRC[$key]=$dir
}
want big && dataset big big "big-$((BIG_BYTES / MiB))MiB" "$BIG_BYTES"
want small && dataset small small "small-$SMALL_FILES" "$SMALL_FILES"
if want many; then
    dataset many many "many-$MANY_FILES" "$MANY_FILES"
    dataset many-flat many "many-$MANY_FLAT_FILES" "$MANY_FLAT_FILES"
fi
want rerun && dataset rerun many "many-$RERUN_FILES" "$RERUN_FILES"
want delta && dataset delta delta "delta-$((DELTA_BYTES / MiB))MiB-at$DELTA_OFFSET" \
    "$DELTA_BYTES" "$DELTA_OFFSET" "$DELTA_CHANGE"
want sparse && dataset sparse sparse "sparse-$((SPARSE_BYTES / MiB))MiB-x$SPARSE_EXTENTS" \
    "$SPARSE_BYTES" "$SPARSE_EXTENTS"
want resume && dataset resume big "big-$((RESUME_BYTES / MiB))MiB" "$RESUME_BYTES"
want wan && dataset wan big "big-$((WAN_BYTES / MiB))MiB" "$WAN_BYTES"

# --- rsync daemon -----------------------------------------------------------------------
RSYNC_PORT=$(free_port tcp)
cat >"$WORK/rsyncd/rsyncd.conf" <<CONF
use chroot = no
log file = $WORK/rsyncd/rsyncd.log
[bench]
    path = $WORK/dst
    uid = root
    gid = root
    read only = no
CONF
rsync --daemon --no-detach --address 127.0.0.1 --port "$RSYNC_PORT" \
    --config "$WORK/rsyncd/rsyncd.conf" 2>>"$WORK/rsyncd/rsyncd.log" &
PIDS+=($!)
wait_until 10 "rsync daemon on port $RSYNC_PORT" rsync "rsync://127.0.0.1:$RSYNC_PORT/"

# --- throwaway sshd ---------------------------------------------------------------------
SSH_PORT=$(free_port tcp)
S=$WORK/ssh
[[ -f $S/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C haul-bench-host -f "$S/host_ed25519"
[[ -f $S/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C haul-bench-client -f "$S/id_ed25519"
cp "$S/id_ed25519.pub" "$S/authorized_keys"
cat >"$S/sshd_config" <<CONF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $S/host_ed25519
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
CONF
mkdir -p /run/sshd # privilege separation directory sshd insists on
/usr/sbin/sshd -D -e -f "$S/sshd_config" 2>>"$S/sshd.log" &
PIDS+=($!)
SSH="ssh -F /dev/null -p $SSH_PORT -i $S/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes"
SSH+=" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
# shellcheck disable=SC2086 # $SSH is a command line, split on purpose
wait_until 10 "sshd on port $SSH_PORT" $SSH root@127.0.0.1 true

# --- haul serve (one per data set, fresh root and config dir) -----------------------------
QUIC_PORT="" FINGERPRINT="" SERVE_PID="" SERVE_ROOT=""
TOKEN=$WORK/serve-token
[[ -f $TOKEN ]] || python3 -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN"
chmod 600 "$TOKEN"
start_serve() { # set
    local base=$WORK/serve/$1 line
    rm -rf "$base"
    mkdir -p "$base/root" "$base/config"
    SERVE_ROOT=$base/root
    QUIC_PORT=$(free_port udp)
    "$HAUL" serve --root "$SERVE_ROOT" --listen "127.0.0.1:$QUIC_PORT" --token-file "$TOKEN" \
        --config-dir "$base/config" >"$base/serve.out" 2>"$base/serve.err" &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    wait_until 15 "haul serve (see $base/serve.err)" grep -q 'fingerprint sha256:' "$base/serve.out"
    line=$(head -n1 "$base/serve.out")
    FINGERPRINT=$(sed -n 's/.* fingerprint \(sha256:[0-9a-fA-F]*\).*/\1/p' <<<"$line")
    [[ -n $FINGERPRINT ]] || die "cannot parse the fingerprint from: $line"
}
stop_serve() { # set: records the receiver's peak RSS, then stops it
    local hwm
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVE_PID/status" 2>/dev/null || echo 0)
    printf '%s\thaul-serve\t0\t0\t0\t%s\n' "$1" "${hwm:-0}" >>"$RAW"
    log "$1: haul serve peak RSS $((${hwm:-0} / 1024)) MiB"
    kill "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
}

# Reads the source into the page cache (untimed) so every tool starts from the same warm
# cache. Needed where the host evicts idle page cache on its own (DAMON "pageout" on VMs):
# there a data set generated minutes ago is mostly back on disk. `tar -cf - >/dev/null`
# would not do: GNU tar skips reading file data when it writes to /dev/null.
warm() { find "$1" -type f -exec cat -- {} + >/dev/null; }

DAMON_NOTE=""
for state in /sys/kernel/mm/damon/admin/kdamonds/*/state; do
    if [[ -r $state && $(cat "$state") == on ]]; then
        DAMON_NOTE="DAMON proactive reclaim is running on this host: the source is re-read into the page cache (untimed) before every run, but cold pages can still be evicted during a run, and fresh page allocations can be slow; expect more noise than usual."
    fi
done

# --- 3. timing --------------------------------------------------------------------------
secs() { printf '%d.%02d' $(($1 / 1000000)) $(($1 % 1000000 / 10000)); } # microseconds

# One run: remove the destination (unless FRESH=0: re-run and delta runs need the old
# copy), flush earlier writes and warm the source (untimed; the page cache is never
# dropped), time the command under /usr/bin/time (peak RSS), then time a `sync` on its
# own so durable (wall + sync) and as-returned times can both be reported.
# LOG is set to the command's output file.
run_one() { # set tool rep src dst command...
    local set=$1 tool=$2 rep=$3 src=$4 dst=$5; shift 5
    local tf=$WORK/logs/time.out t0 t1 t2 rc=0 rss
    LOG=$WORK/logs/$set.$tool.$rep.log
    ((${FRESH:-1})) && rm -rf -- "$dst"
    sync
    warm "$src"
    t0=${EPOCHREALTIME/./}
    /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$LOG" 2>&1 || rc=$?
    t1=${EPOCHREALTIME/./}
    sync
    t2=${EPOCHREALTIME/./}
    if ((rc != 0)); then
        tail -n 20 "$LOG" >&2
        die "$tool failed on the $set set (exit $rc): $* (log: $LOG)"
    fi
    read -r _ rss < <(tail -n1 "$tf")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$set" "$tool" "$rep" $((t1 - t0)) $((t2 - t1)) "$rss" >>"$RAW"
    log "$(printf '%-9s %-17s rep %d: %6ss (+ sync %ss), peak RSS %d MiB' "$set" "$tool" "$rep" \
        "$(secs $((t1 - t0)))" "$(secs $((t2 - t1)))" $((rss / 1024)))"
    if [[ $tool == haul-* ]]; then
        grep -q '"event":"summary"' "$LOG" || die "$tool printed no JSON summary (log: $LOG)"
    fi
}

# Records the fields of haul's --json summary (the last line of LOG) as metrics.
summary_metrics() { # set tool
    local k v
    while read -r k v; do
        metric "$1" "$2" "$k" "$v"
    done < <(python3 -c 'import json, sys
line = [l for l in open(sys.argv[1]) if "\"event\":\"summary\"" in l][-1]
s = json.loads(line)
for k in ("bytes_sent", "chunks_sent", "chunks_reused", "bytes_reused", "files_transferred",
          "files_unchanged", "elapsed_s"):
    print(k, s.get(k, "n/a"))' "$LOG")
}

verify() { # set tool src dst: a fast-but-wrong haul run must not count
    local out=$WORK/logs/$1.$2.diff
    log "$1 $2: verifying the copy against the source (diff -r)"
    if ! diff -r --no-dereference -q "$3" "$4" >"$out" 2>&1; then
        head -n 20 "$out" >&2
        die "$2 produced a copy of the $1 set that differs from the source (see $out)"
    fi
    log "$1 $2: copy verified identical to the source"
}

allocated() { du -s --block-size=1 -- "$1" | cut -f1; } # bytes on disk (sparse check)

# Sets CMD (the command line) and DST (where it writes) for one run of TOOL into a
# destination called NAME. RSYNC_OPTS holds extra rsync options (--no-W, -S).
RSYNC_OPTS=()
tool_cmd() { # tool name src
    local tool=$1 name=$2 src=$3
    DST=$WORK/dst/$name
    case $tool in
        cp) CMD=(cp -a "$src" "$DST") ;;
        cp-sparse) CMD=(cp -a --sparse=always "$src" "$DST") ;;
        cp-par)
            # The file system's floor with both cores and no network: two cp -a at once, each
            # copying its share of the second-level entries (the many set's ~3,000 directories)
            # into first-level directories made beforehand. Not a faithful copy (the first
            # level's times are not kept): it measures only what creating the files costs here.
            # shellcheck disable=SC2016 # expanded by the inner bash
            CMD=(bash -c 'set -o pipefail; cd "$1" && mkdir -p "$2" &&
                find . -mindepth 1 -maxdepth 1 -type d -exec mkdir -p "$2/{}" ";" &&
                find . -mindepth 2 -maxdepth 2 -print0 | xargs -0 -r -P2 -n 8 cp -a --parents -t "$2"'
                _ "$src" "$DST") ;;
        rsync-daemon) CMD=(rsync -a "${RSYNC_OPTS[@]}" "$src/" "rsync://127.0.0.1:$RSYNC_PORT/bench/$name/") ;;
        rsync-ssh) CMD=(rsync -a "${RSYNC_OPTS[@]}" -e "$SSH" "$src/" "root@127.0.0.1:$DST/") ;;
        tar-ssh)
            # shellcheck disable=SC2016 # expanded by the inner bash
            CMD=(bash -c 'set -o pipefail; tar -C "$1" -cf - . | $2 root@127.0.0.1 "mkdir -p $3 && tar -C $3 -xf -"'
                _ "$src" "$SSH" "$DST") ;;
        haul-copy) CMD=("$HAUL" copy "$src" "$DST" --json) ;;
        stat-floor)
            # What every no-change re-run must do at the least: stat each entry of the source
            # and of the copy. Both walks at once, one core each, nothing compared or sent.
            # NAME is the copy to walk (one an earlier tool made); nothing is written.
            DST=$WORK/dst/$name
            # shellcheck disable=SC2016 # expanded by the inner bash
            CMD=(bash -c 'find "$1" -printf "%s %T@\n" >/dev/null & p=$!; find "$2" -printf "%s %T@\n" >/dev/null || exit 1; wait "$p"'
                _ "$src" "$DST") ;;
        haul-push)
            DST=$SERVE_ROOT/$name
            CMD=("$HAUL" push "$src" "quic://127.0.0.1:$QUIC_PORT/$name" --fingerprint "$FINGERPRINT"
                --token-file "$TOKEN" --json) ;;
        *) die "unknown tool $tool" ;;
    esac
}

# --- 4. the sets --------------------------------------------------------------------------
# big, small, many: fresh copies into an empty destination, best of REPS.
bench_fresh() { # set reps tool...
    local set=$1 reps=$2 src=${SRC[$1]} rep tool; shift 2
    log "$set: ${FILES[$set]} files, ${BYTES[$set]} bytes; best of $reps: $*"
    # Round-robin over tools inside each repetition, so slow drift (other jobs on the
    # machine, disk write-back) spreads over all tools instead of hitting one.
    for ((rep = 1; rep <= reps; rep++)); do
        for tool; do
            # A fresh destination name per run. Besides being tidy, this sidesteps a haul
            # serve bug seen at 838b7c0: after a pushed directory is deleted behind the
            # server's back, pushing to the same path again fails ("could not install
            # (rename into place) ...: No such file or directory").
            tool_cmd "$tool" "$set-$tool-$rep" "$src"
            run_one "$set" "$tool" "$rep" "$src" "$DST" "${CMD[@]}"
            if [[ $tool == haul-* ]]; then
                summary_metrics "$set" "$tool"
                if ((rep == 1)); then verify "$set" "$tool" "$src" "$DST"; fi
            fi
            log "$set: removing $DST"
            rm -rf -- "$DST"
        done
    done
}

# rerun: every tool copies the tree once (untimed), then no-change re-runs are timed.
bench_rerun() {
    local src=${SRC[rerun]} tools=(rsync-daemon rsync-ssh haul-copy haul-push) rep tool
    start_serve rerun
    log "rerun: ${FILES[rerun]} files, ${BYTES[rerun]} bytes; no-change re-runs, best of $REPS"
    for tool in "${tools[@]}"; do
        tool_cmd "$tool" "rerun-$tool" "$src"
        log "rerun: initial copy with $tool (untimed)"
        rm -rf -- "$DST"
        "${CMD[@]}" >"$WORK/logs/rerun.$tool.initial.log" 2>&1 \
            || die "$tool failed the initial copy (log: $WORK/logs/rerun.$tool.initial.log)"
    done
    for ((rep = 1; rep <= REPS; rep++)); do
        for tool in "${tools[@]}"; do
            tool_cmd "$tool" "rerun-$tool" "$src"
            FRESH=0 run_one rerun "$tool" "$rep" "$src" "$DST" "${CMD[@]}"
            if [[ $tool == haul-* ]]; then summary_metrics rerun "$tool"; fi
        done
        # The floor of this host for the set: the stat walk of the source and rsync's copy.
        tool_cmd stat-floor rerun-rsync-daemon "$src"
        FRESH=0 run_one rerun stat-floor "$rep" "$src" "$DST" "${CMD[@]}"
    done
    for tool in "${tools[@]}"; do
        tool_cmd "$tool" "rerun-$tool" "$src"
        if [[ $tool == haul-* ]]; then verify rerun "$tool" "$src" "$DST"; fi
        rm -rf -- "$DST"
    done
    stop_serve rerun
}

# delta: the destination holds the old version and the source the new one, which differs in
# DELTA_CHANGE contiguous bytes. The old version is put there untimed by cp -a, except for
# haul push, where it comes from an earlier haul push (as in nightly replication, so the
# receiver has its chunk-hash cache); either way it is read once afterwards, so every tool
# finds it in the page cache.
bench_delta() {
    local src=${SRC[delta]}/new old=${SRC[delta]}/old rep tool
    start_serve delta
    RSYNC_OPTS=(--no-W)
    log "delta: ${BYTES[delta]}-byte file, $DELTA_CHANGE bytes changed at $DELTA_OFFSET; best of $REPS"
    for ((rep = 1; rep <= REPS; rep++)); do
        for tool in rsync-daemon rsync-ssh haul-copy haul-push; do
            tool_cmd "$tool" "delta-$tool-$rep" "$old"
            rm -rf -- "$DST"
            if [[ $tool == haul-push ]]; then
                "${CMD[@]}" >"$WORK/logs/delta.old.log" 2>&1 ||
                    die "haul push of the old version failed (log: $WORK/logs/delta.old.log)"
            else
                cp -a "$old" "$DST"
            fi
            warm "$DST"
            tool_cmd "$tool" "delta-$tool-$rep" "$src"
            FRESH=0 run_one delta "$tool" "$rep" "$src" "$DST" "${CMD[@]}"
            if [[ $tool == haul-* ]]; then
                summary_metrics delta "$tool"
                if ((rep == 1)); then verify delta "$tool" "$src" "$DST"; fi
            fi
            rm -rf -- "$DST"
        done
    done
    RSYNC_OPTS=()
    stop_serve delta
}

# sparse: a fresh copy of one sparse file; the copies' allocated size is recorded.
bench_sparse() {
    local src=${SRC[sparse]} rep tool alloc
    start_serve sparse
    RSYNC_OPTS=(-S)
    log "sparse: ${BYTES[sparse]}-byte file holding ${DATA[sparse]} bytes of data; best of $REPS"
    for ((rep = 1; rep <= REPS; rep++)); do
        for tool in cp-sparse rsync-daemon haul-copy haul-push; do
            tool_cmd "$tool" "sparse-$tool-$rep" "$src"
            run_one sparse "$tool" "$rep" "$src" "$DST" "${CMD[@]}"
            alloc=$(allocated "$DST/sparse.bin")
            metric sparse "$tool" allocated "$alloc"
            log "sparse $tool: the copy allocates $alloc bytes (the source holds ${DATA[sparse]})"
            if [[ $tool == haul-* ]]; then
                summary_metrics sparse "$tool"
                if ((rep == 1)); then verify sparse "$tool" "$src" "$DST"; fi
            fi
            rm -rf -- "$DST"
        done
    done
    RSYNC_OPTS=()
    stop_serve sparse
}

# Progress of the partial files under DIR: "ARRIVED JOURNALED" bytes. Every partial there is
# this run's: haul copy's DIR is in a fresh destination, and haul serve's partials of earlier
# runs were completed and removed.
# ARRIVED is what the .data files allocate (written, holes where nothing came yet);
# JOURNALED is what the .journal files record as verified and durable, i.e. what a re-run
# may skip (format in haul-store's journal.rs: chunk_size u32 at offset 32, rel_len u32 at
# 36, a header of 48 + rel_len bytes, then 48-byte records).
partial_progress() { # dir
    local f sz blocks cs rel records arrived=0 journaled=0
    while IFS= read -r -d '' f; do
        case $f in
            *.data)
                blocks=$(stat -c %b -- "$f") || continue
                arrived=$((arrived + blocks * 512)) ;;
            *.journal)
                sz=$(stat -c %s -- "$f") || continue
                read -r cs rel < <(od -An -t u4 -j 32 -N 8 -- "$f") || continue
                records=$(((sz - 48 - rel) / 48))
                if ((records > 0)); then journaled=$((journaled + records * cs)); fi ;;
        esac
    done < <(find "$1" -type f \( -name '*.data' -o -name '*.journal' \) -print0 2>/dev/null)
    echo "$arrived $journaled"
}

# Runs CMD and SIGKILLs it once half of SIZE has arrived in the partial
# file (haul's --json has no progress events to poll instead). How much of it was also
# journaled (so a re-run may skip it) is logged and recorded.
kill_at_half() { # tool state-root size src
    local tool=$1 root=$2 size=$3 src=$4 arrived=0 journaled=0
    local lf=$WORK/logs/resume.$tool.killed.log
    rm -rf -- "$DST"
    sync
    warm "$src"
    # One python process starts the command and polls every 5 ms, so it is watching from the
    # first byte (haul copy writes a 512 MiB file in a third of a second), and sends the
    # SIGKILL itself.
    if ! python3 - "$root/.haul/partial" "$size" "$lf" "${CMD[@]}" <<'PY'; then
import os, signal, subprocess, sys, time
part, size, log, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
with open(log, "wb") as out:
    child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
signal.signal(signal.SIGTERM, lambda *_: (child.kill(), sys.exit(1)))
while child.poll() is None:
    arrived = 0
    try:
        for e in os.scandir(part):
            if e.name.endswith(".data"):
                arrived += e.stat().st_blocks * 512
    except FileNotFoundError:
        pass
    if arrived * 2 >= size:
        child.send_signal(signal.SIGKILL)
        child.wait()
        sys.exit(0)
    time.sleep(0.005)
sys.exit(1)  # it ended (done or failed) before half of the file arrived
PY
        tail -n 5 "$lf" >&2
        die "$tool ended before half of the file arrived (log: $lf)"
    fi
    sleep 0.2 # let a last checkpoint, if any, land (the process is gone; this is the kernel)
    read -r arrived journaled < <(partial_progress "$root/.haul/partial")
    metric resume "$tool-resume" killed_at "$arrived"
    metric resume "$tool-resume" journaled_at_kill "$journaled"
    log "resume $tool: SIGKILLed with $arrived of $size bytes in the partial file ($((arrived * 100 / size))%), $journaled bytes journaled ($((journaled * 100 / size))%)"
}

# resume: per tool, a full copy, then a copy SIGKILLed at 50% and its timed re-run.
bench_resume() {
    local src=${SRC[resume]} rep tool root
    start_serve resume
    log "resume: ${BYTES[resume]}-byte file; kill -9 at 50%, then re-run; best of $REPS"
    for ((rep = 1; rep <= REPS; rep++)); do
        for tool in haul-copy haul-push; do
            tool_cmd "$tool" "resume-$tool-$rep-full" "$src"
            run_one resume "$tool-full" "$rep" "$src" "$DST" "${CMD[@]}"
            summary_metrics resume "$tool-full"
            if ((rep == 1)); then verify resume "$tool-full" "$src" "$DST"; fi
            rm -rf -- "$DST"

            tool_cmd "$tool" "resume-$tool-$rep" "$src"
            root=$DST
            [[ $tool == haul-push ]] && root=$SERVE_ROOT
            kill_at_half "$tool" "$root" "${BYTES[resume]}" "$src"
            FRESH=0 run_one resume "$tool-resume" "$rep" "$src" "$DST" "${CMD[@]}"
            summary_metrics resume "$tool-resume"
            verify resume "$tool-resume" "$src" "$DST"
            rm -rf -- "$DST"
        done
    done
    stop_serve resume
}

# ---------------------------------------------------------------------------------------
# wan: RESERVED for the lead. haul push vs rsync over an emulated WAN link, through the
# user-space link emulator `haul-linkemu` (being written separately). Add the data set in
# section 2, then implement this function and call it from the loop below; the report picks
# up any set/tool rows written to $RAW and $METRICS. Not implemented on purpose.
bench_wan() {
    local src=${SRC[wan]} rep emu_port emu_pid
    start_serve wan
    log "wan: haul push of ${BYTES[wan]} bytes through $WAN_DESC; best of $REPS"
    for ((rep = 1; rep <= REPS; rep++)); do
        # A fresh emulator per run: it relays for the first client address it sees only.
        emu_port=$(free_port udp)
        "$LINKEMU" --listen "127.0.0.1:$emu_port" --to "127.0.0.1:$QUIC_PORT" \
            --rate "${WAN_RATE_MBIT}mbit" --delay "$WAN_DELAY" --loss "$WAN_LOSS" --queue "$WAN_QUEUE" \
            >"$WORK/logs/linkemu.$rep.out" 2>&1 &
        emu_pid=$!
        PIDS+=("$emu_pid")
        wait_until 10 "haul-linkemu" grep -q 'listening on' "$WORK/logs/linkemu.$rep.out"
        DST=$SERVE_ROOT/wan-$rep
        CMD=("$HAUL" push "$src" "quic://127.0.0.1:$emu_port/wan-$rep" --fingerprint "$FINGERPRINT"
            --token-file "$TOKEN" --json)
        run_one wan haul-push "$rep" "$src" "$DST" "${CMD[@]}"
        summary_metrics wan haul-push
        if ((rep == 1)); then verify wan haul-push "$src" "$DST"; fi
        rm -rf -- "$DST"
        kill -INT "$emu_pid" 2>/dev/null || true
        wait "$emu_pid" 2>/dev/null || true
        log "wan: $(tail -n1 "$WORK/logs/linkemu.$rep.out")"
    done
    stop_serve wan
}
# ---------------------------------------------------------------------------------------

NET_TOOLS=(cp rsync-daemon rsync-ssh tar-ssh haul-copy haul-push)
for set in "${SETS[@]}"; do
    case $set in
        big|small)
            start_serve "$set"
            bench_fresh "$set" "$REPS" "${NET_TOOLS[@]}"
            stop_serve "$set" ;;
        many)
            start_serve many
            # cp -a (one, then two at once), local and without a network: the floors for
            # creating the files.
            bench_fresh many "$MANY_REPS" cp cp-par rsync-daemon rsync-ssh haul-push
            stop_serve many
            # The same tree at a tenth of the size, for how peak RSS grows with file count.
            # REPS runs (seconds each): a short run may end before the receiver's buffers
            # first fill, and its peak then reads low; the serve's peak is over all of them.
            start_serve many-flat
            bench_fresh many-flat "$REPS" haul-push
            stop_serve many-flat ;;
        rerun) bench_rerun ;;
        delta) bench_delta ;;
        sparse) bench_sparse ;;
        resume) bench_resume ;;
        wan) bench_wan ;;
    esac
done

# --- 5./6. tables and chart -------------------------------------------------------------
STAMP=$(date +%Y%m%d-%H%M)
SUFFIX=""
((QUICK)) && SUFFIX=-quick # a CI-sized run never replaces the full-size latest.md/.svg
OUT_MD=$RESULTS/compare-$STAMP$SUFFIX.md
LATEST_MD=$RESULTS/latest$SUFFIX.md LATEST_SVG=$RESULTS/latest$SUFFIX.svg
# Only a run of every set may replace latest*.md/.svg; a partial (--only) run writes its
# own dated file and a partial chart next to it.
if ((${#ONLY[@]})); then
    LATEST_MD=$RESULTS/partial$SUFFIX.md LATEST_SVG=$RESULTS/partial$SUFFIX.svg
    MODE+=", only ${SETS[*]}"
fi
HOST_NPROC=$(nproc) HOST_KERNEL=$(uname -sr) HOST_DATE=$(date '+%Y-%m-%d %H:%M %Z')
HOST_CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
HOST_MEM=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
HAUL_REV=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
V_RSYNC=$(rsync --version | awk 'NR == 1 {print $3}')
V_SSH=$(ssh -V 2>&1 | awk '{print $1}')
SETS_META=""
for s in "${!SRC[@]}"; do SETS_META+="$s ${BYTES[$s]} ${FILES[$s]} ${DATA[$s]:-0};"; done
export RAW METRICS MODE REPS MANY_REPS OUT_MD DAMON_NOTE FS_NOTE LATEST_MD LATEST_SVG HOST_NPROC HOST_KERNEL
export HOST_DATE HOST_CPU HOST_MEM HAUL_REV V_RSYNC V_SSH SETS_META DELTA_OFFSET DELTA_CHANGE
export WAN_RATE_MBIT WAN_DESC

python3 - <<'PY'
import collections, html, os

env = os.environ
ORDER = ["big", "small", "many", "many-flat", "rerun", "delta", "sparse", "resume", "wan"]
TITLES = {
    "big": "big: one file, fresh copy",
    "small": "small: many 1-16 KiB files, fresh copy",
    "many": "many: GroupWise-like offiles/ tree, fresh copy",
    "many-flat": "many, a tenth of the files (peak RSS growth)",
    "rerun": "rerun: no-change re-run of a tree every tool copied before",
    "delta": "delta: a changed range inside one file the target holds the old version of",
    "sparse": "sparse: one sparse file, fresh copy",
    "resume": "resume: full copy vs re-run after kill -9 at 50%",
    "wan": "wan: one file pushed through an emulated WAN link",
}
LABELS = {
    "cp": "cp -a", "cp-par": "two cp -a at once", "cp-sparse": "cp -a --sparse=always",
    "rsync-daemon": "rsync (daemon)", "rsync-ssh": "rsync over ssh",
    "tar-ssh": "tar | ssh", "haul-copy": "haul copy", "haul-push": "haul push",
    "haul-copy-full": "haul copy, full", "haul-copy-resume": "haul copy, re-run after kill",
    "haul-push-full": "haul push, full", "haul-push-resume": "haul push, re-run after kill",
    "stat-floor": "stat of both trees at once (find)",
}
SET_LABELS = {
    ("delta", "rsync-daemon"): "rsync --no-W (daemon)",
    ("delta", "rsync-ssh"): "rsync --no-W over ssh",
    ("sparse", "rsync-daemon"): "rsync -S (daemon)",
}
TOOL_ORDER = list(LABELS)
THROUGHPUT_SETS = {"big", "small", "many", "many-flat", "wan"}

def label(s, t):
    return SET_LABELS.get((s, t), LABELS.get(t, t))

def md(text):
    return text.replace("|", "\\|")

meta = {}
for item in env["SETS_META"].strip(";").split(";"):
    if item:
        name, nbytes, nfiles, data = item.split()
        meta[name] = (int(nbytes), int(nfiles), int(data))

runs = collections.defaultdict(list)   # (set, tool) -> [(wall_s, sync_s, rss_kib)]
serve_hwm = {}
with open(env["RAW"]) as f:
    for line in f:
        s, tool, _rep, wall_us, sync_us, rss = line.rstrip("\n").split("\t")
        if tool == "haul-serve":
            serve_hwm[s] = int(rss) / 1024
        else:
            runs[s, tool].append((int(wall_us) / 1e6, int(sync_us) / 1e6, int(rss)))

metrics = {}  # (set, tool, key) -> the largest value over repetitions (the worst case)
with open(env["METRICS"]) as f:
    for line in f:
        s, tool, key, value = line.rstrip("\n").split("\t")
        try:
            v = float(value)
        except ValueError:
            continue
        metrics[s, tool, key] = max(v, metrics.get((s, tool, key), v))

def best(s, tool):
    r = runs.get((s, tool))
    if not r:
        return None
    return {"wall": min(w for w, _, _ in r), "durable": min(w + y for w, y, _ in r),
            "rss": max(k for _, _, k in r) / 1024}

def mib(n):
    return f"{n / 2**20:,.1f} MiB"

# --- targets: one row per target of the issue, PASS/MISS ----------------------------------
targets = []  # (set, check, measured, target, ok)
def check(s, what, measured, target, ok):
    targets.append((s, what, measured, target, "PASS" if ok else "**MISS**"))

def ratio_target(s, h, p, limit, suffix=""):
    bh, bp = best(s, h), best(s, p)
    if bh and bp:
        # Times below the 10 ms resolution of what counts here read as 10 ms.
        r = max(bh["durable"], 0.01) / max(bp["durable"], 0.01)
        check(s, f"{label(s, h)}{suffix} / {label(s, p)}{suffix}, durable time",
              f"{r:.2f}x ({bh['durable']:.2f} s vs {bp['durable']:.2f} s)", f"<= {limit}x", r <= limit)

if "big" in meta:
    # ">= 2.0x rsync-over-ssh throughput" is push time <= 0.5x, ">= 1.6x daemon" <= 0.625x.
    ratio_target("big", "haul-push", "rsync-ssh", 0.5)
    ratio_target("big", "haul-push", "rsync-daemon", 0.625)
    ratio_target("big", "haul-copy", "cp", 1.2)
if "small" in meta:
    ratio_target("small", "haul-push", "rsync-ssh", 0.5)
    ratio_target("small", "haul-push", "tar-ssh", 0.8)
if "wan" in meta:
    b = best("wan", "haul-push")
    if b:
        mbit = meta["wan"][0] * 8 / b["wall"] / 1e6
        rate = int(env["WAN_RATE_MBIT"])
        check("wan", f"haul push through {env['WAN_DESC']}: payload rate / link rate",
              f"{mbit / rate:.0%} ({mbit:,.0f} Mbit/s of {rate:,})", ">= 90%", mbit >= 0.9 * rate)
if "many" in meta:
    n1, n0 = meta["many"][1], meta.get("many-flat", (0, 0, 0))[1]
    ratio_target("many", "haul-push", "rsync-daemon", 0.35)
    ratio_target("many", "haul-push", "rsync-ssh", 0.35)
    for who, big_rss, small_rss in (
            ("haul push", (best("many", "haul-push") or {}).get("rss"),
             (best("many-flat", "haul-push") or {}).get("rss")),
            ("haul serve", serve_hwm.get("many"), serve_hwm.get("many-flat"))):
        if big_rss is not None:
            check("many", f"{who} peak RSS at {n1:,} files", f"{big_rss:,.1f} MiB", "<= 256 MiB",
                  big_rss <= 256)
        if big_rss is not None and small_rss:
            growth = big_rss / small_rss
            check("many", f"{who} peak RSS flat: {n1:,} vs {n0:,} files",
                  f"{growth:.2f}x ({big_rss:,.1f} vs {small_rss:,.1f} MiB)", "<= 1.25x",
                  growth <= 1.25)
if "rerun" in meta:
    ratio_target("rerun", "haul-push", "rsync-daemon", 0.5, " re-run")
    for t in ("haul-push", "haul-copy"):
        sent = metrics.get(("rerun", t, "bytes_sent"))
        if sent is not None:
            check("rerun", f"{label('rerun', t)} file bytes sent on a no-change re-run",
                  f"{sent:,.0f} B", "0 B", sent == 0)
if "delta" in meta:
    for t in ("haul-push", "haul-copy"):
        c = metrics.get(("delta", t, "chunks_sent"))
        b = metrics.get(("delta", t, "bytes_sent"))
        if c is not None:
            check("delta", f"{label('delta', t)} chunks sent ({int(env['DELTA_CHANGE']) >> 20} MiB "
                  f"changed at byte {int(env['DELTA_OFFSET']):,})",
                  f"{c:.0f} chunks, {mib(b or 0)}", "<= 3 chunks", c <= 3)
    ratio_target("delta", "haul-push", "rsync-daemon", 0.3)
    ratio_target("delta", "haul-push", "rsync-ssh", 0.3)
if "sparse" in meta:
    data = meta["sparse"][2]
    sent = metrics.get(("sparse", "haul-push", "bytes_sent"))
    if sent is not None:
        check("sparse", f"haul push bytes sent / data in the file ({mib(data)})",
              f"{sent / data:.2f}x ({mib(sent)})", "<= 1.05x", sent <= 1.05 * data)
    ratio_target("sparse", "haul-copy", "cp-sparse", 1.3)
    for t in ("haul-copy", "haul-push"):
        a = metrics.get(("sparse", t, "allocated"))
        if a is not None:
            check("sparse", f"{label('sparse', t)}: the copy is sparse (du / data)",
                  f"{a / data:.2f}x ({mib(a)} allocated)", "<= 1.05x", a <= 1.05 * data)
if "resume" in meta:
    size = meta["resume"][0]
    for t in ("haul-copy", "haul-push"):
        k = metrics.get(("resume", f"{t}-resume", "killed_at"))
        j = metrics.get(("resume", f"{t}-resume", "journaled_at_kill"))
        at = f", killed at {k / size:.0%} arrived, {(j or 0) / size:.0%} journaled" if k else ""
        bf, br = best("resume", f"{t}-full"), best("resume", f"{t}-resume")
        if bf and br:
            r = br["durable"] / bf["durable"]
            check("resume", f"{LABELS[t]}: re-run after kill / full copy, durable{at}",
                  f"{r:.2f}x ({br['durable']:.2f} s vs {bf['durable']:.2f} s)", "<= 0.55x",
                  r <= 0.55)

out = []
out.append(f"# haul vs peers ({env['MODE']} run, {env['HOST_DATE']})\n")
out.append(f"- host: {env['HOST_NPROC']} cores ({env['HOST_CPU']}), {env['HOST_MEM']} RAM, "
           f"kernel {env['HOST_KERNEL']}")
out.append(f"- haul {env['HAUL_REV']}, rsync {env['V_RSYNC']}, {env['V_SSH']}; "
           f"every tool over loopback on this one host")
out.append(f"- best of {env['REPS']} run(s) per tool (the `many` set: {env['MANY_REPS']}), "
           "tools interleaved round-robin")
out.append("- page cache: **warm**. Caches are never dropped, and the source is read once "
           "(untimed) right before every run, so every tool reads it from memory: this measures "
           "transfer and write cost, not source-disk reads.")
out.append("- **durable** = the command's wall time + a `sync` right after it. haul flushes "
           "(syncfs) before it reports success, the other tools do not, so durable times are the "
           "fair comparison and every ratio uses them; *returned* is when the command alone exited.")
out.append("- Peak RSS is the largest single local process (GNU time); server-side processes "
           "(rsync daemon child, sshd, remote rsync/tar) are not included. `haul serve` is "
           "listed separately. Bytes and chunks sent come from haul's `--json` summary (the "
           "largest over repetitions).")
if env.get("FS_NOTE"):
    out.append("- " + env["FS_NOTE"])
if env.get("DAMON_NOTE"):
    out.append("- note: " + env["DAMON_NOTE"])
out.append("- ratio = haul time / peer time: **below 1 means haul is faster**.\n")

# --- floors: what this host allows at best, for the rows a ratio to rsync cannot show ------
floors = []  # (set, what, measured)
def floor(s, what, a, b):
    ba, bb = best(s, a), best(s, b)
    if ba and bb:
        r = max(ba["durable"], 0.01) / max(bb["durable"], 0.01)
        floors.append((s, f"{what}: {label(s, a)} / {label(s, b)}",
                       f"{r:.2f}x ({ba['durable']:.2f} s vs {bb['durable']:.2f} s)"))
floor("rerun", "the stat walk any re-run needs", "stat-floor", "rsync-daemon")
floor("rerun", "haul above that walk", "haul-push", "stat-floor")
floor("big", "writing the file durably, no network", "cp", "rsync-daemon")
floor("many", "creating the files locally, no network", "cp", "rsync-daemon")
floor("many", "creating the files with both cores, no network", "cp-par", "rsync-daemon")
floor("many", "haul above a local copy", "haul-push", "cp")
floor("many", "haul above a two-core local copy", "haul-push", "cp-par")

if targets:
    out.append("## Targets\n")
    out.append("| set | check | measured | target | result |")
    out.append("|---|---|--:|--:|:-:|")
    for s, what, measured, target, ok in targets:
        out.append(f"| {s} | {md(what)} | {measured} | {target} | {ok} |")
    out.append("")
if floors:
    out.append("## Floors on this host\n")
    out.append("Not targets: what the same run measured for the work any tool must do, to show "
               "how far below it a target sits.\n")
    out.append("| set | comparison | measured |")
    out.append("|---|---|--:|")
    for s, what, measured in floors:
        out.append(f"| {s} | {md(what)} | {measured} |")
    out.append("")

chart = []  # (set, label, value, unit)
for s in ORDER:
    if s not in meta:
        continue
    nbytes, nfiles, data = meta[s]
    tools = [t for t in TOOL_ORDER if (s, t) in runs]
    if not tools:
        continue
    b = {t: best(s, t) for t in tools}
    size = f"{nbytes / 1e6:,.1f} MB" + (f" apparent, {data / 1e6:,.1f} MB of data" if data else "")
    out.append(f"## {TITLES[s]}: {nfiles:,} file(s), {size}\n")
    extra_sent = any((s, t, "bytes_sent") in metrics for t in tools)
    extra_alloc = any((s, t, "allocated") in metrics for t in tools)
    head = "| tool | durable (s) | returned (s) | MB/s | peak RSS (MiB) |"
    rule = "|---|--:|--:|--:|--:|"
    if extra_sent:
        head += " bytes sent | chunks sent |"
        rule += "--:|--:|"
    if extra_alloc:
        head += " allocated (MiB) |"
        rule += "--:|"
    out.append(head)
    out.append(rule)
    for t in tools:
        d = b[t]
        mbs = nbytes / 1e6 / d["durable"] if d["durable"] > 0 else 0.0
        if s in THROUGHPUT_SETS:
            chart.append((s, label(s, t), mbs, "MB/s"))
        else:
            chart.append((s, label(s, t), d["durable"], "s"))
        name = md(label(s, t))
        name = f"**{name}**" if t.startswith("haul") else name
        row = f"| {name} | {d['durable']:.2f} | {d['wall']:.2f} | {mbs:,.1f} | {d['rss']:,.1f} |"
        if extra_sent:
            bs, cs = metrics.get((s, t, "bytes_sent")), metrics.get((s, t, "chunks_sent"))
            row += f" {'' if bs is None else f'{bs:,.0f}'} | {'' if cs is None else f'{cs:,.0f}'} |"
        if extra_alloc:
            a = metrics.get((s, t, "allocated"))
            row += f" {'' if a is None else f'{a / 2**20:,.1f}'} |"
        out.append(row)
    if s in serve_hwm:
        cols = 2 * extra_sent + extra_alloc
        out.append(f"| haul serve (receiver, peak over all runs) | | | | "
                   f"{serve_hwm[s]:,.1f} |" + " |" * cols)
    out.append("")

text = "\n".join(out)
for path in (env["OUT_MD"], env["LATEST_MD"]):
    with open(path, "w") as f:
        f.write(text)
print(text)

# Horizontal bars, one panel per data set with its own scale and unit: throughput for the
# fresh-copy sets, seconds for the others. Hand-written SVG: no plotting library needed.
W, LEFT, BAR, GAP, PANEL_GAP, TOP = 820, 200, 20, 5, 44, 56
sets = list(dict.fromkeys(c[0] for c in chart))
height = TOP + sum(PANEL_GAP + len([c for c in chart if c[0] == s]) * (BAR + GAP) for s in sets) + 20
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
       f'viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="13">',
       f'<rect width="{W}" height="{height}" fill="white"/>',
       f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="16" font-weight="bold">'
       f'haul and its peers, durable times (warm cache, loopback)</text>',
       f'<text x="{W / 2}" y="40" text-anchor="middle" font-size="12" fill="#555">'
       f'{html.escape(env["MODE"])} run, best of {html.escape(env["REPS"])}, '
       f'{html.escape(env["HOST_NPROC"])} cores, {html.escape(env["HOST_DATE"])}</text>']
y = TOP
for s in sets:
    rows = [c for c in chart if c[0] == s]
    unit = rows[0][3]
    peak = max(v for _, _, v, _ in rows) or 1.0
    how = "MB/s, longer is better" if unit == "MB/s" else "seconds, shorter is better"
    svg.append(f'<text x="10" y="{y + 18}" font-weight="bold">{html.escape(TITLES[s])}'
               f'<tspan font-weight="normal" fill="#555"> ({how})</tspan></text>')
    y += PANEL_GAP - 14
    for _, name, v, _ in rows:
        w = (W - LEFT - 90) * v / peak
        color = "#d9534f" if name.startswith("haul") else "#5b7fa6"
        svg.append(f'<text x="{LEFT - 8}" y="{y + BAR - 5}" text-anchor="end">{html.escape(name)}</text>')
        svg.append(f'<rect x="{LEFT}" y="{y}" width="{w:.1f}" height="{BAR}" fill="{color}"/>')
        svg.append(f'<text x="{LEFT + w + 6:.1f}" y="{y + BAR - 5}">{v:,.1f}</text>')
        y += BAR + GAP
    y += 14
svg.append("</svg>")
with open(env["LATEST_SVG"], "w") as f:
    f.write("\n".join(svg) + "\n")

# The verdicts once more on stderr, so they read at a glance at the end of a long log.
import sys
for s, what, measured, target, ok in targets:
    print(f"[compare] {ok.strip('*'):4} {s:7} {what}: {measured} (target {target})", file=sys.stderr)
PY
log "wrote $OUT_MD, $LATEST_MD and $LATEST_SVG"
