#!/usr/bin/env bash
# fs-bench.sh - Distribox mount vs. the native disk, in one run, same disk.
#
# Creates BENCH_ROOT/distribox-bench.XXXXXX with data/ (Distribox data dir),
# mnt/ (its mount point) and native/ (plain directory): data/ and native/ are on the
# same file system, so the comparison is "Distribox on this disk" vs "this disk".
# Every metric is the median of RUNS runs; runs alternate native, (bindfs,) distribox.
#   a) seq_write   fio bench/fio/seq-write.fio: one SIZE_MB MiB file, 1 MiB write(2)s,
#                  fsync at the end (included in the time); the file is deleted
#                  before every run, so each run creates it anew            MiB/s
#   b) seq_read    fio bench/fio/seq-read.fio: that file, 1 MiB reads       MiB/s
#   c) rand_read   fio bench/fio/rand-read.fio: 4 KiB random reads over that
#                  file, psync, 1 job, RAND_SECONDS seconds                 IOPS
#   d) create      python3: N_FILES files of 4 KiB (distinct random content) in
#                  N_DIRS subdirectories, open(O_CREAT|O_EXCL)+write+close each,
#                  no fsync; the tree is deleted before every run         seconds
#   e) stat        find DIR -type f -printf '%s %T@' over those files
#                  (lstat of every file)                                  seconds
#   f) round_trip  python3: stat(2) of N_MISSING names that do not exist, each
#                  once: on a FUSE mount one LOOKUP request each (neither
#                  Distribox nor bindfs caches a miss)                 µs per call
# Below the table: what round trips alone cost a create. Every new file is four
# requests the caller waits for (LOOKUP, CREATE, WRITE, FLUSH; RELEASE is not
# waited for), so N_FILES × 4 round trips is a floor no FUSE file system here gets
# under, and native's create time divided by it the best create ratio one can reach.
# A third column, when bindfs is installed (apt-get install bindfs) and PASSTHROUGH
# is not 0: the same workloads through bindfs, a libfuse passthrough of a plain
# directory on the same disk. It is the FUSE floor of this machine: what any FUSE
# file system pays in round trips and copies before doing any work of its own, so
# a ratio that bindfs does not reach either is a cost of FUSE here, not of Distribox.
# Page cache: `sync; echo 3 > /proc/sys/vm/drop_caches` before every run of every
# metric (needs root; DROP_CACHES=0 skips it and says so in the output). This drops
# the kernel's caches, including the FUSE page cache, but not Distribox's own
# in-process caches (e.g. RocksDB's block cache).
#
# Usage (as root, from anywhere; nothing is built):
#   bench/fs-bench.sh                                # full run, markdown on stdout
#   SIZE_MB=64 N_FILES=500 RAND_SECONDS=5 bench/fs-bench.sh   # quick smoke run
# Environment:
#   SIZE_MB       size of the big file for a-c, MiB                     (1024)
#   N_FILES       number of 4 KiB files for d-e                         (10000)
#   N_DIRS        subdirectories the files are spread over              (100)
#   RUNS          runs per metric and file system, median reported      (3)
#   N_MISSING     stat(2) calls per round_trip run                      (20000)
#   RAND_SECONDS  duration of every random-read run                     (20)
#   BENCH_ROOT    parent of the work dir; must be a real disk, not tmpfs (/var/tmp)
#   DISTRIBOX_BIN binary to use (default: $CARGO_TARGET_DIR, then
#                 ~/.cache/distribox-target, then ./target; release before debug)
#   DISTRIBOX_MOUNT_ARGS  extra words for `distribox mount` (word-split)
#   DROP_CACHES   0 = don't drop caches (not comparable; flagged in the output) (1)
#   OUT           also write the markdown report to this file
#   KEEP_WORKDIR  1 = keep the work dir (data dir, logs, fio JSON)        (0)
#   PASSTHROUGH   0 = no bindfs column; 1 = require bindfs   (auto: if installed)
# Output: progress on stderr; on stdout a markdown block (machine, command, table
# metric | native | distribox | ratio, per-run values) for docs/performance.md.
# ratio: higher is better for every row: distribox/native for throughput rows,
# native_time/distribox_time for time rows.
# Requires: bash >= 5, fio, python3, jq (optional; python3 parses fio's JSON
# otherwise), findutils, util-linux, fuse3 (fusermount3).
# Cleanup: the mounts are always unmounted on exit (distribox unmount, then
# fusermount3 -u, then umount -l; bindfs: fusermount3 -u, then umount -l) and the
# work dir is removed.

set -euo pipefail
export LC_ALL=C

SIZE_MB=${SIZE_MB:-1024}
N_FILES=${N_FILES:-10000}
N_MISSING=${N_MISSING:-20000}
N_DIRS=${N_DIRS:-100}
RUNS=${RUNS:-3}
RAND_SECONDS=${RAND_SECONDS:-20}
BENCH_ROOT=${BENCH_ROOT:-/var/tmp}
DROP_CACHES=${DROP_CACHES:-1}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
OUT=${OUT:-}
PASSTHROUGH=${PASSTHROUGH:-auto}
FILE_SIZE=4096

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(dirname "$HERE")
FIO_DIR="$HERE/fio"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in SIZE_MB N_FILES N_DIRS RUNS RAND_SECONDS N_MISSING; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
command -v fio >/dev/null || die "fio is required (apt-get install fio)"
command -v python3 >/dev/null || die "python3 is required"
for j in seq-write seq-read rand-read; do
    [ -f "$FIO_DIR/$j.fio" ] || die "missing $FIO_DIR/$j.fio"
done
case $PASSTHROUGH in
    auto) if command -v bindfs >/dev/null; then PASSTHROUGH=1; else PASSTHROUGH=0; fi ;;
    1) command -v bindfs >/dev/null || die "PASSTHROUGH=1 needs bindfs (apt-get install bindfs)" ;;
    0) ;;
    *) die "PASSTHROUGH must be 0, 1 or auto (got '$PASSTHROUGH')" ;;
esac
if [ "$DROP_CACHES" = 1 ] && [ ! -w /proc/sys/vm/drop_caches ]; then
    die "cannot write /proc/sys/vm/drop_caches: run as root, or DROP_CACHES=0 (results then not comparable)"
fi

find_bin() {
    local c t
    if [ -n "${DISTRIBOX_BIN:-}" ]; then
        [ -x "$DISTRIBOX_BIN" ] || return 1
        echo "$DISTRIBOX_BIN"; return 0
    fi
    for t in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR"} "$HOME/.cache/distribox-target" "$REPO/target"; do
        for c in "$t/release/distribox" "$t/debug/distribox"; do
            if [ -x "$c" ]; then echo "$c"; return 0; fi
        done
    done
    return 1
}
BIN=$(find_bin) || die "distribox binary not found (set DISTRIBOX_BIN or build it: cargo build --release)"
BIN=$(cd "$(dirname "$BIN")" && pwd -P)/$(basename "$BIN")
case $BIN in
    */release/distribox) PROFILE=release ;;
    */debug/distribox) PROFILE=debug ;;
    *) PROFILE=unknown ;;
esac
[ "$PROFILE" = release ] || log "warning: using a $PROFILE build ($BIN); benchmark numbers should come from a release build"

mkdir -p "$BENCH_ROOT"
BENCH_ROOT=$(cd "$BENCH_ROOT" && pwd -P)
ROOT_FSTYPE=$(df -PT "$BENCH_ROOT" | awk 'NR == 2 {print $2}')
case $ROOT_FSTYPE in
    tmpfs | ramfs | overlay | fuse*) log "warning: BENCH_ROOT $BENCH_ROOT is on $ROOT_FSTYPE, not a plain disk" ;;
esac
# native: SIZE_MB; distribox: RUNS deleted-and-rewritten copies may stay in the
# versioned store, plus write-ahead log: be generous.
NEED_MB=$(( SIZE_MB * (2 * RUNS + 3) + N_FILES * 3 * FILE_SIZE / 1048576 + 512 ))
AVAIL_MB=$(( $(df -Pk "$BENCH_ROOT" | awk 'NR == 2 {print $4}') / 1024 ))
[ "$AVAIL_MB" -ge "$NEED_MB" ] || die "need ~${NEED_MB} MiB free in $BENCH_ROOT, have ${AVAIL_MB} MiB (lower SIZE_MB/RUNS or set BENCH_ROOT)"

WORK=$(mktemp -d "$BENCH_ROOT/distribox-bench.XXXXXX")
DATA="$WORK/data"
MNT="$WORK/mnt"
NATIVE="$WORK/native"
PASS_SRC="$WORK/pass-src"
PASS="$WORK/pass"
NODE_LOG="$WORK/distribox.log"
mkdir -p "$DATA" "$MNT" "$NATIVE" "$PASS_SRC" "$PASS" "$WORK/json"
chmod 0700 "$DATA"

is_mounted() { awk -v m="${1:-$MNT}" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

unmount_pass() {
    is_mounted "$PASS" || return 0
    fusermount3 -u "$PASS" 2>/dev/null || true
    is_mounted "$PASS" || return 0
    umount -l "$PASS" || true
    ! is_mounted "$PASS"
}

unmount_fs() {
    is_mounted || return 0
    log "unmounting $MNT"
    timeout -k 5 120 "$BIN" --data-dir "$DATA" unmount "$MNT" >>"$NODE_LOG" 2>&1 || log "warning: distribox unmount failed (exit $?)"
    is_mounted || return 0
    fusermount3 -u "$MNT" 2>/dev/null || true
    is_mounted || return 0
    log "warning: falling back to umount -l $MNT"
    umount -l "$MNT" || true
    ! is_mounted
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    cd /
    if [ "$rc" != 0 ] && [ -s "$NODE_LOG" ]; then
        log "last lines of $NODE_LOG:"
        tail -n 20 "$NODE_LOG" >&2 || true
    fi
    local stuck=0
    unmount_pass || stuck=1
    unmount_fs || stuck=1
    if [ "$stuck" = 1 ]; then
        log "ERROR: $MNT or $PASS is still mounted; leaving $WORK in place"
        exit 1
    fi
    if [ "$KEEP_WORKDIR" = 1 ]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ "$(stat -c %d "$DATA")" = "$(stat -c %d "$NATIVE")" ] || die "data dir and native dir are on different file systems"

log "mounting: $BIN --data-dir $DATA mount $MNT ${DISTRIBOX_MOUNT_ARGS:-}"
# Output goes to a file, never a pipe: the background node may keep the fds open.
# shellcheck disable=SC2086
"$BIN" --data-dir "$DATA" mount "$MNT" ${DISTRIBOX_MOUNT_ARGS:-} >>"$NODE_LOG" 2>&1 \
    || die "distribox mount failed (exit $?); see above"
for _ in $(seq 50); do is_mounted && break; sleep 0.2; done
is_mounted || die "distribox mount returned but $MNT is not in /proc/self/mountinfo"
DBX="$MNT/bench"
mkdir "$DBX"
if [ "$PASSTHROUGH" = 1 ]; then
    log "mounting: bindfs $PASS_SRC $PASS"
    bindfs "$PASS_SRC" "$PASS" || die "bindfs failed (exit $?)"
    is_mounted "$PASS" || die "bindfs returned but $PASS is not in /proc/self/mountinfo"
fi

drop_caches() {
    sync
    if [ "$DROP_CACHES" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

now() { echo "$EPOCHREALTIME"; }
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }'; }

# json_get FILE JQ_EXPR PY_EXPR -> value (jq if installed, else python3; j = parsed JSON)
json_get() {
    if command -v jq >/dev/null; then
        jq -r "$2" "$1"
    else
        python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$3"
    fi
}

# run_fio JOB DIR TAG -> JSON file path
run_fio() {
    local json="$WORK/json/$1-$3.json"
    BENCH_DIR=$2 SIZE_MB=$SIZE_MB RAND_SECONDS=$RAND_SECONDS \
        fio --output-format=json --output="$json" "$FIO_DIR/$1.fio" >&2 \
        || die "fio $1 failed in $2 (see $json)"
    echo "$json"
}

declare -A RES # RES[metric,fs] = "v1 v2 ..."
add() { RES[$1,$2]="${RES[$1,$2]:+${RES[$1,$2]} }$3"; }

median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

dir_of() {
    case $1 in
        native) echo "$NATIVE" ;;
        passthrough) echo "$PASS" ;;
        *) echo "$DBX" ;;
    esac
}
FSES="native distribox"
[ "$PASSTHROUGH" = 1 ] && FSES="native passthrough distribox"

# ---------------------------------------------------------------- a) b) c) big file
for r in $(seq "$RUNS"); do
    for fs in $FSES; do
        d=$(dir_of "$fs")
        rm -f "$d/fsbench.dat"
        drop_caches
        log "seq_write run $r/$RUNS: $fs"
        j=$(run_fio seq-write "$d" "$fs-$r")
        sz=$(stat -c %s "$d/fsbench.dat")
        [ "$sz" = $((SIZE_MB * 1048576)) ] || die "$fs: fsbench.dat has $sz bytes after seq-write, expected $((SIZE_MB * 1048576))"
        v=$(json_get "$j" '.jobs[0].write.bw_bytes / 1048576' "j['jobs'][0]['write']['bw_bytes'] / 1048576")
        add seq_write "$fs" "$v"
    done
done
sync
DATA_MB=$(du -sm "$DATA" | awk '{print $1}')
for r in $(seq "$RUNS"); do
    for fs in $FSES; do
        drop_caches
        log "seq_read run $r/$RUNS: $fs"
        j=$(run_fio seq-read "$(dir_of "$fs")" "$fs-$r")
        v=$(json_get "$j" '.jobs[0].read.bw_bytes / 1048576' "j['jobs'][0]['read']['bw_bytes'] / 1048576")
        add seq_read "$fs" "$v"
    done
done
for r in $(seq "$RUNS"); do
    for fs in $FSES; do
        drop_caches
        log "rand_read run $r/$RUNS: $fs (${RAND_SECONDS}s)"
        j=$(run_fio rand-read "$(dir_of "$fs")" "$fs-$r")
        v=$(json_get "$j" '.jobs[0].read.iops' "j['jobs'][0]['read']['iops']")
        add rand_read "$fs" "$v"
    done
done
for fs in $FSES; do rm -f "$(dir_of "$fs")/fsbench.dat"; done

# ---------------------------------------------------------------- d) e) small files
CREATE_PY="$WORK/create.py"
cat >"$CREATE_PY" <<'PY'
import os, sys, time
root, n, size, ndirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
blob = memoryview(os.urandom(n * size))  # distinct content per file: no dedup
names = ['%s/d%03d/f%06d' % (root, i % ndirs, i) for i in range(n)]
flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0)
t0 = time.perf_counter()
os.mkdir(root)
for i in range(ndirs):
    os.mkdir('%s/d%03d' % (root, i))
for i, name in enumerate(names):
    fd = os.open(name, flags, 0o644)
    buf = blob[i * size:(i + 1) * size]
    done = 0
    while done < size:
        done += os.write(fd, buf[done:])
    os.close(fd)
print('%.6f' % (time.perf_counter() - t0))
PY
for r in $(seq "$RUNS"); do
    for fs in $FSES; do
        t="$(dir_of "$fs")/small"
        rm -rf "$t"
        drop_caches
        log "create run $r/$RUNS: $fs ($N_FILES files)"
        v=$(python3 "$CREATE_PY" "$t" "$N_FILES" "$FILE_SIZE" "$N_DIRS") || die "$fs: creating the small files failed"
        add create "$fs" "$v"
    done
done
for r in $(seq "$RUNS"); do
    for fs in $FSES; do
        t="$(dir_of "$fs")/small"
        drop_caches
        log "stat run $r/$RUNS: $fs"
        t0=$(now)
        n=$(find "$t" -type f -printf '%s %T@\n' | wc -l)
        v=$(secs_since "$t0")
        add stat "$fs" "$v"
        [ "$n" = "$N_FILES" ] || die "$fs: find saw $n files, expected $N_FILES"
    done
done

# ---------------------------------------------------------------- f) round trip
RTT_PY="$WORK/round_trip.py"
cat >"$RTT_PY" <<'PY'
import os, sys, time
root, n, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = ['%s/missing-%s-%06d' % (root, run, i) for i in range(n)]  # new names each run
t0 = time.perf_counter()
for name in names:
    try:
        os.stat(name)
    except FileNotFoundError:
        pass
    else:
        sys.exit('%s exists' % name)
print('%.3f' % ((time.perf_counter() - t0) / n * 1e6))
PY
for r in $(seq "$RUNS"); do
    for fs in $FSES; do
        log "round_trip run $r/$RUNS: $fs ($N_MISSING missing names)"
        v=$(python3 "$RTT_PY" "$(dir_of "$fs")/small" "$N_MISSING" "$r") || die "$fs: the round-trip run failed"
        add round_trip "$fs" "$v"
    done
done

# ---------------------------------------------------------------- report
# shellcheck source=bench/machine-info.sh
. "$HERE/machine-info.sh"

commit=$(source_commit "$REPO")
cmd="SIZE_MB=$SIZE_MB N_FILES=$N_FILES N_DIRS=$N_DIRS RUNS=$RUNS RAND_SECONDS=$RAND_SECONDS N_MISSING=$N_MISSING"
[ -n "${DISTRIBOX_MOUNT_ARGS:-}" ] && cmd="$cmd DISTRIBOX_MOUNT_ARGS='$DISTRIBOX_MOUNT_ARGS'"
[ "$DROP_CACHES" = 1 ] || cmd="$cmd DROP_CACHES=0"
cmd="$cmd bench/fs-bench.sh"

# fmt_value KIND UNIT VALUE -> a table cell
fmt_value() {
    local prec=1
    if [ "$1" = tput ]; then
        [ "$2" = IOPS ] && prec=0
        printf '%.*f %s' "$prec" "$3" "$2"
    elif [ "$1" = lat ]; then
        printf '%.1f µs' "$3"
    else
        awk -v t="$3" -v c="$N_FILES" 'BEGIN { printf "%.3f s (%.0f files/s)", t, c / t }'
    fi
}
# speed_ratio KIND BASE VALUE -> how fast VALUE is relative to BASE (higher is better)
speed_ratio() {
    if [ "$1" = tput ]; then
        awk -v n="$2" -v d="$3" 'BEGIN { if (n > 0) printf "%.2f", d / n; else print "n/a" }'
    else
        awk -v n="$2" -v d="$3" 'BEGIN { if (d > 0) printf "%.2f", n / d; else print "n/a" }'
    fi
}
# row METRIC LABEL KIND(tput|time) [UNIT]
row() {
    local m=$1 label=$2 kind=$3 unit=${4:-} n d p
    # shellcheck disable=SC2086
    n=$(median ${RES[$m,native]})
    # shellcheck disable=SC2086
    d=$(median ${RES[$m,distribox]})
    if [ "$PASSTHROUGH" = 1 ]; then
        # shellcheck disable=SC2086
        p=$(median ${RES[$m,passthrough]})
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$(fmt_value "$kind" "$unit" "$n")" \
            "$(fmt_value "$kind" "$unit" "$p")" "$(fmt_value "$kind" "$unit" "$d")" \
            "$(speed_ratio "$kind" "$n" "$d")" "$(speed_ratio "$kind" "$n" "$p")" "$(speed_ratio "$kind" "$p" "$d")"
    else
        printf '| %s | %s | %s | %s |\n' "$label" "$(fmt_value "$kind" "$unit" "$n")" \
            "$(fmt_value "$kind" "$unit" "$d")" "$(speed_ratio "$kind" "$n" "$d")"
    fi
}
runs_line() {
    local m=$1 prec=$2 fs v out
    out="- $m:"
    for fs in $FSES; do
        out="$out $fs ["
        for v in ${RES[$m,$fs]}; do out="$out$(printf '%.*f' "$prec" "$v") "; done
        out="${out% }]"
    done
    echo "$out"
}

# create_floor: what the round trips alone cost N_FILES creates on each FUSE mount,
# and the best create ratio to native that leaves
create_floor() {
    local nat fs rtt
    # shellcheck disable=SC2086
    nat=$(median ${RES[create,native]})
    for fs in $FSES; do
        [ "$fs" = native ] && continue
        # shellcheck disable=SC2086
        rtt=$(median ${RES[round_trip,$fs]})
        awk -v fs="$fs" -v n="$N_FILES" -v r="$rtt" -v nat="$nat" 'BEGIN {
            f = n * 4 * r / 1e6
            printf "- create floor, %s: %d files × 4 waited-for requests × %.1f µs = %.3f s of round trips alone, so at best %.2f× native'"'"'s %.3f s\n", fs, n, r, f, nat / f, nat
        }'
    done
}

report() {
    echo "### fs-bench: Distribox vs. native disk ($(date -u +%Y-%m-%d))"
    echo
    machine_info "$BENCH_ROOT"
    echo "- distribox: commit $commit, $PROFILE build; fio $(fio --version 2>/dev/null | sed 's/^fio-//'), Python $(python3 -c 'import platform; print(platform.python_version())')"
    echo "- command (as root, repo root): \`$cmd\`"
    if [ "$DROP_CACHES" = 1 ]; then
        echo "- median of $RUNS runs each; page cache dropped (\`sync; echo 3 > /proc/sys/vm/drop_caches\`) before every run; Distribox's in-process caches are not dropped"
    else
        echo "- median of $RUNS runs each; **page cache NOT dropped (DROP_CACHES=0): reads may be served from cache**"
    fi
    echo "- ratio = distribox / native throughput (time rows: native time / distribox time); higher is better, 1.00 = native speed"
    if [ "$PASSTHROUGH" = 1 ]; then
        echo "- bindfs: $(bindfs --version 2>/dev/null | head -n 1), default options, a libfuse passthrough of a plain directory on the same disk (the FUSE floor: round trips and copies, no work of its own)"
        echo
        echo "| metric | native | bindfs | distribox | distribox/native | bindfs/native | distribox/bindfs |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
    else
        echo
        echo "| metric | native | distribox | ratio |"
        echo "|---|---:|---:|---:|"
    fi
    row seq_write "sequential write ${SIZE_MB} MiB, 1 MiB blocks, + fsync" tput MiB/s
    row seq_read "sequential read ${SIZE_MB} MiB, 1 MiB blocks, cold cache" tput MiB/s
    row rand_read "random 4 KiB reads, QD1, ${RAND_SECONDS} s, cold cache" tput IOPS
    row create "create+write+close ${N_FILES} × 4 KiB files (no fsync)" time
    row stat "\`find -printf '%s %T@'\` (lstat) over ${N_FILES} files, cold cache" time
    row round_trip "stat(2) of a missing name (on FUSE: one LOOKUP round trip)" lat
    echo
    create_floor
    echo
    echo "Per-run values (MiB/s, IOPS, seconds; round_trip: µs):"
    echo
    runs_line seq_write 1
    runs_line seq_read 1
    runs_line rand_read 0
    runs_line create 3
    runs_line stat 3
    runs_line round_trip 1
    echo "- Distribox data dir after the write runs ($RUNS × ${SIZE_MB} MiB written, each file deleted before the next run): ${DATA_MB} MiB"
}

if [ -n "$OUT" ]; then
    report | tee "$OUT"
else
    report
fi
log "done"
