#!/usr/bin/env bash
# Side-by-side comparison of haul with cp, rsync (daemon and over ssh) and tar over ssh,
# all on loopback on this machine. See benches/README.md for what the numbers mean.
#
# usage: benches/compare.sh [--quick] [--no-build] [--only big|small] [--reps N]
#
#   --quick          small data sets (256 MiB file, 2,000 small files), 1 repetition (CI)
#   --no-build       do not run `cargo build --release` (the binary must exist)
#   --only SET       run only the `big` or the `small` data set
#   --reps N         repetitions per tool; the best (shortest) run counts [3; --quick: 1]
#
# Environment: HAUL_BENCH_DIR (work dir, default benches/work, git-ignored),
# HAUL_BIN (the haul binary, default target/release/haul).
#
# Runs as root (it starts a throwaway sshd and rsync daemon on loopback ports, and installs
# missing tools with apt-get). Everything it starts is killed on exit.
set -euo pipefail

usage() { sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '[compare] %s\n' "$*" >&2; }
die() { printf '[compare] error: %s\n' "$*" >&2; exit 1; }

QUICK=0 BUILD=1 ONLY="" REPS=""
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --only) [[ ${2:-} == big || ${2:-} == small ]] || die "--only takes big or small"; ONLY=$2; shift ;;
        --only=*) ONLY=${1#--only=}; [[ $ONLY == big || $ONLY == small ]] || die "--only takes big or small" ;;
        --reps) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive number"; REPS=$2; shift ;;
        --reps=*) REPS=${1#--reps=}; [[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive number" ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

if ((QUICK)); then
    BIG_BYTES=$((256 << 20)) SMALL_FILES=2000 REPS=${REPS:-1} MODE=quick
else
    BIG_BYTES=$((2 << 30)) SMALL_FILES=20000 REPS=${REPS:-3} MODE=full
fi
SETS=(big small)
[[ -n $ONLY ]] && SETS=("$ONLY")

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
    (cd "$REPO" && cargo build --release --quiet)
fi
[[ -x $HAUL ]] || die "no haul binary at $HAUL; build it (drop --no-build) or set HAUL_BIN"

mkdir -p "$WORK"/{data,dst,logs,ssh,rsyncd,serve} "$RESULTS"
RAW=$WORK/logs/raw-$(date +%Y%m%d-%H%M%S).tsv
: >"$RAW"

# --- background daemons, killed on exit -------------------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    # Leave the data sets for the next run; the copies are only big.
    rm -rf "$WORK/dst" "$WORK/serve"
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
# Deterministic: the same seed gives the same bytes, so every run (and every machine)
# copies the same data. A data set is reused when its .meta file exists (written last).
gen_data() { # kind dir param
    python3 - "$@" <<'PY'
import hashlib, os, random, shutil, sys
kind, out, param = sys.argv[1], sys.argv[2], int(sys.argv[3])
tmp = out + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
total = files = 0
if kind == "big":
    # One incompressible file. SHAKE-256 per 8 MiB block: ~4x faster than Random.randbytes.
    block = 8 << 20
    with open(os.path.join(tmp, "big.bin"), "wb") as f:
        i = 0
        while total < param:
            n = min(block, param - total)
            f.write(hashlib.shake_256(b"haul-bench-big/%d" % i).digest(n))
            total += n
            i += 1
    files = 1
else:
    # param files of 1-16 KiB spread over 100 directories.
    rng = random.Random(20240611)
    dirs = [os.path.join(tmp, "d%02d" % d) for d in range(100)]
    for d in dirs:
        os.makedirs(d)
    for i in range(param):
        data = rng.randbytes(rng.randint(1024, 16384))
        with open(os.path.join(dirs[i % 100], "f%05d.bin" % i), "wb") as f:
            f.write(data)
        total += len(data)
    files = param
os.sync()
os.rename(tmp, out)
with open(out + ".meta", "w") as m:
    m.write(f"{total} {files}\n")
PY
}

declare -A SRC BYTES FILES DESC
for set in "${SETS[@]}"; do
    if [[ $set == big ]]; then
        dir=$WORK/data/big-$((BIG_BYTES >> 20))MiB param=$BIG_BYTES
    else
        dir=$WORK/data/small-$SMALL_FILES param=$SMALL_FILES
    fi
    if [[ ! -f $dir.meta ]]; then
        log "generating $set data set in $dir"
        rm -rf "$dir"
        gen_data "$set" "$dir" "$param"
    fi
    read -r BYTES[$set] FILES[$set] <"$dir.meta"
    SRC[$set]=$dir
done

# --- rsync daemon -----------------------------------------------------------------------
RSYNC_PORT=$(free_port tcp)
cat >"$WORK/rsyncd/rsyncd.conf" <<EOF
use chroot = no
log file = $WORK/rsyncd/rsyncd.log
[bench]
    path = $WORK/dst
    uid = root
    gid = root
    read only = no
EOF
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
cat >"$S/sshd_config" <<EOF
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
EOF
mkdir -p /run/sshd # privilege separation directory sshd insists on
/usr/sbin/sshd -D -e -f "$S/sshd_config" 2>>"$S/sshd.log" &
PIDS+=($!)
SSH="ssh -F /dev/null -p $SSH_PORT -i $S/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes"
SSH+=" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
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
# One run: remove the destination, flush earlier writes and warm the source (untimed; the
# page cache is never dropped), time the command under /usr/bin/time (peak RSS), then time
# a `sync` on its own so durable (wall + sync) and as-returned times can both be reported.
run_one() { # set tool rep dst command...
    local set=$1 tool=$2 rep=$3 dst=$4; shift 4
    local lf=$WORK/logs/$set.$tool.$rep.log tf=$WORK/logs/time.out t0 t1 t2 rc=0 el rss
    rm -rf -- "$dst"
    sync
    warm "${SRC[$set]}"
    t0=${EPOCHREALTIME/./}
    /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$lf" 2>&1 || rc=$?
    t1=${EPOCHREALTIME/./}
    sync
    t2=${EPOCHREALTIME/./}
    if ((rc != 0)); then
        tail -n 20 "$lf" >&2
        die "$tool failed on the $set set (exit $rc): $* (log: $lf)"
    fi
    read -r el rss < <(tail -n1 "$tf")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$set" "$tool" "$rep" $((t1 - t0)) $((t2 - t1)) "$rss" >>"$RAW"
    log "$(printf '%-5s %-12s rep %d: %ss (+ sync %ss), peak RSS %d MiB' "$set" "$tool" "$rep" \
        "$(secs $((t1 - t0)))" "$(secs $((t2 - t1)))" $((rss / 1024)))"
}

secs() { printf '%d.%02d' $(($1 / 1000000)) $(($1 % 1000000 / 10000)); } # microseconds

verify() { # set tool src dst: a fast-but-wrong haul run must not count
    if ! diff -r --no-dereference -q "$3" "$4" >"$WORK/logs/$1.$2.diff" 2>&1; then
        head -n 20 "$WORK/logs/$1.$2.diff" >&2
        die "$2 produced a copy of the $1 set that differs from the source (see $WORK/logs/$1.$2.diff)"
    fi
    [[ $1 == big ]] && { cmp -s "$3/big.bin" "$4/big.bin" || die "$2: big.bin differs"; }
    log "$1 $2: copy verified identical to the source"
}

TOOLS=(cp rsync-daemon rsync-ssh tar-ssh haul-copy haul-push)
for set in "${SETS[@]}"; do
    src=${SRC[$set]}
    start_serve "$set"
    log "$set: ${FILES[$set]} files, ${BYTES[$set]} bytes; best of $REPS"
    # Round-robin over tools inside each repetition, so slow drift (other jobs on the
    # machine, disk write-back) spreads over all tools instead of hitting one.
    for ((rep = 1; rep <= REPS; rep++)); do
        for tool in "${TOOLS[@]}"; do
            # A fresh destination name per repetition. Besides being tidy, this sidesteps a
            # haul serve bug seen at 838b7c0: after a pushed directory is deleted behind the
            # server's back, pushing to the same path again fails ("could not install
            # (rename into place) ...: No such file or directory").
            name=$set-$tool-$rep
            dst=$WORK/dst/$name
            case $tool in
                cp) run_one "$set" "$tool" "$rep" "$dst" cp -a "$src" "$dst" ;;
                rsync-daemon)
                    run_one "$set" "$tool" "$rep" "$dst" \
                        rsync -a "$src/" "rsync://127.0.0.1:$RSYNC_PORT/bench/$name/" ;;
                rsync-ssh)
                    run_one "$set" "$tool" "$rep" "$dst" \
                        rsync -a -e "$SSH" "$src/" "root@127.0.0.1:$dst/" ;;
                tar-ssh)
                    run_one "$set" "$tool" "$rep" "$dst" bash -c \
                        'set -o pipefail; tar -C "$1" -cf - . | $2 root@127.0.0.1 "mkdir -p $3 && tar -C $3 -xf -"' \
                        _ "$src" "$SSH" "$dst" ;;
                haul-copy) run_one "$set" "$tool" "$rep" "$dst" "$HAUL" copy "$src" "$dst" --json ;;
                haul-push)
                    dst=$SERVE_ROOT/$name
                    run_one "$set" "$tool" "$rep" "$dst" "$HAUL" push "$src" \
                        "quic://127.0.0.1:$QUIC_PORT/$name" --fingerprint "$FINGERPRINT" \
                        --token-file "$TOKEN" --json ;;
            esac
            if [[ $tool == haul-* ]]; then
                grep -q '"event":"summary"' "$WORK/logs/$set.$tool.$rep.log" \
                    || die "$tool printed no JSON summary (log: $WORK/logs/$set.$tool.$rep.log)"
                if ((rep == 1)); then verify "$set" "$tool" "$src" "$dst"; fi
            fi
            rm -rf -- "$dst"
        done
    done
    stop_serve "$set"
done

# --- 5./6. tables and chart -------------------------------------------------------------
STAMP=$(date +%Y%m%d-%H%M)
SUFFIX=""
((QUICK)) && SUFFIX=-quick # a CI-sized run never replaces the full-size latest.md/.svg
OUT_MD=$RESULTS/compare-$STAMP$SUFFIX.md
export RAW MODE REPS OUT_MD DAMON_NOTE LATEST_MD=$RESULTS/latest$SUFFIX.md LATEST_SVG=$RESULTS/latest$SUFFIX.svg
export HOST_NPROC=$(nproc) HOST_KERNEL=$(uname -sr) HOST_DATE=$(date '+%Y-%m-%d %H:%M %Z')
export HOST_CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
export HOST_MEM=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
export HAUL_REV=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
export V_RSYNC=$(rsync --version | awk 'NR == 1 {print $3}')
export V_SSH=$(ssh -V 2>&1 | awk '{print $1}')
export SETS_META=$(for s in "${SETS[@]}"; do printf '%s %s %s;' "$s" "${BYTES[$s]}" "${FILES[$s]}"; done)

python3 - <<'PY'
import collections, html, os

env = os.environ
LABELS = {
    "cp": "cp -a", "rsync-daemon": "rsync (daemon)", "rsync-ssh": "rsync over ssh",
    "tar-ssh": "tar | ssh", "haul-copy": "haul copy", "haul-push": "haul push",
}
ORDER = list(LABELS)
meta = {}
for item in env["SETS_META"].strip(";").split(";"):
    name, nbytes, nfiles = item.split()
    meta[name] = (int(nbytes), int(nfiles))

runs = collections.defaultdict(list)   # (set, tool) -> [(wall_s, sync_s, rss_kib)]
serve_hwm = {}
with open(env["RAW"]) as f:
    for line in f:
        s, tool, _rep, wall_us, sync_us, rss = line.rstrip("\n").split("\t")
        if tool == "haul-serve":
            serve_hwm[s] = int(rss)
        else:
            runs[s, tool].append((int(wall_us) / 1e6, int(sync_us) / 1e6, int(rss)))

def best(s, tool):
    r = runs[s, tool]
    return {
        "wall": min(w for w, _, _ in r),
        "durable": min(w + y for w, y, _ in r),
        "rss": max(k for _, _, k in r) / 1024,
    }

def ratio(a, b):
    return f"{a / b:.2f}" if b > 0 else "n/a"

out = []
out.append(f"# haul vs peers ({env['MODE']} run, {env['HOST_DATE']})\n")
out.append(f"- host: {env['HOST_NPROC']} cores ({env['HOST_CPU']}), {env['HOST_MEM']} RAM, "
           f"kernel {env['HOST_KERNEL']}")
out.append(f"- haul {env['HAUL_REV']}, rsync {env['V_RSYNC']}, {env['V_SSH']}; "
           f"every tool over loopback on this one host")
out.append(f"- best of {env['REPS']} run(s) per tool, tools interleaved round-robin")
out.append("- page cache: **warm**. Caches are never dropped, and the source is read once "
           "(untimed) right before every run, so every tool reads it from memory: this measures "
           "transfer and write cost, not source-disk reads.")
out.append("- **durable** = the command's wall time + a `sync` right after it. haul flushes "
           "(syncfs) before it reports success, the other tools do not, so durable times are the "
           "fair comparison; *returned* is when the command alone exited.")
out.append("- MB/s = data-set bytes / durable time (10^6 bytes). Peak RSS is the largest single "
           "local process (GNU time); server-side processes (rsync daemon child, sshd, remote "
           "rsync/tar) are not included. `haul serve` is listed separately.")
if env.get("DAMON_NOTE"):
    out.append("- note: " + env["DAMON_NOTE"])
out.append("- ratio = haul time / peer time: **below 1 means haul is faster**.\n")

chart = []
for s, (nbytes, nfiles) in meta.items():
    tools = [t for t in ORDER if runs[s, t]]
    if not tools:
        continue
    b = {t: best(s, t) for t in tools}
    out.append(f"## {s}: {nfiles:,} file(s), {nbytes / 1e6:,.1f} MB\n")
    out.append("| tool | durable (s) | returned (s) | MB/s | peak RSS (MiB) "
               "| haul copy / tool | haul push / tool |")
    out.append("|---|--:|--:|--:|--:|--:|--:|")
    for t in tools:
        d = b[t]
        mbs = nbytes / 1e6 / d["durable"] if d["durable"] > 0 else 0.0
        chart.append((s, LABELS[t], mbs))
        rc = ratio(b["haul-copy"]["durable"], d["durable"]) if "haul-copy" in b else "n/a"
        rp = ratio(b["haul-push"]["durable"], d["durable"]) if "haul-push" in b else "n/a"
        name = LABELS[t].replace("|", "\\|")
        name = f"**{name}**" if t.startswith("haul") else name
        out.append(f"| {name} | {d['durable']:.2f} | {d['wall']:.2f} | {mbs:,.1f} "
                   f"| {d['rss']:,.1f} | {rc} | {rp} |")
    if s in serve_hwm:
        out.append(f"| haul serve (receiver, peak over all runs) | | | | "
                   f"{serve_hwm[s] / 1024:,.1f} | | |")
    out.append("")
    out.append("| comparison | ratio, durable | ratio, returned |")
    out.append("|---|--:|--:|")
    for h, p in [("haul-copy", "cp"), ("haul-push", "rsync-daemon"),
                 ("haul-push", "rsync-ssh"), ("haul-push", "tar-ssh"), ("haul-copy", "rsync-daemon")]:
        if h in b and p in b:
            label = f"{LABELS[h]} vs {LABELS[p]}".replace("|", "\\|")
            out.append(f"| {label} | {ratio(b[h]['durable'], b[p]['durable'])} "
                       f"| {ratio(b[h]['wall'], b[p]['wall'])} |")
    out.append("")

md = "\n".join(out)
for path in (env["OUT_MD"], env["LATEST_MD"]):
    with open(path, "w") as f:
        f.write(md)
print(md)

# Horizontal bars, one panel per data set with its own scale (big-file MB/s would flatten
# the small-file bars on a shared axis). Hand-written SVG: no plotting library needed.
W, LEFT, BAR, GAP, PANEL_GAP, TOP = 760, 130, 22, 6, 44, 56
sets = list(dict.fromkeys(s for s, _, _ in chart))
height = TOP + sum(PANEL_GAP + len([c for c in chart if c[0] == s]) * (BAR + GAP) for s in sets) + 20
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
       f'viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="13">',
       f'<rect width="{W}" height="{height}" fill="white"/>',
       f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="16" font-weight="bold">'
       f'Throughput in MB/s, durable (higher is better)</text>',
       f'<text x="{W / 2}" y="40" text-anchor="middle" font-size="12" fill="#555">'
       f'{html.escape(env["MODE"])} run, best of {html.escape(env["REPS"])}, '
       f'{html.escape(env["HOST_NPROC"])} cores, loopback, warm page cache, '
       f'{html.escape(env["HOST_DATE"])}</text>']
y = TOP
for s in sets:
    rows = [c for c in chart if c[0] == s]
    nbytes, nfiles = meta[s]
    peak = max(m for _, _, m in rows) or 1.0
    svg.append(f'<text x="10" y="{y + 18}" font-weight="bold">{html.escape(s)}: '
               f'{nfiles:,} file(s), {nbytes / 1e6:,.0f} MB</text>')
    y += PANEL_GAP - 14
    for _, label, mbs in rows:
        w = (W - LEFT - 90) * mbs / peak
        color = "#d9534f" if label.startswith("haul") else "#5b7fa6"
        svg.append(f'<text x="{LEFT - 8}" y="{y + BAR - 6}" text-anchor="end">{html.escape(label)}</text>')
        svg.append(f'<rect x="{LEFT}" y="{y}" width="{w:.1f}" height="{BAR}" fill="{color}"/>')
        svg.append(f'<text x="{LEFT + w + 6:.1f}" y="{y + BAR - 6}">{mbs:,.1f}</text>')
        y += BAR + GAP
    y += 14
svg.append("</svg>")
with open(env["LATEST_SVG"], "w") as f:
    f.write("\n".join(svg) + "\n")
PY
log "wrote $OUT_MD, $LATEST_MD and $LATEST_SVG"
