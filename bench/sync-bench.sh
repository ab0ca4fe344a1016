#!/usr/bin/env bash
# sync-bench.sh - Distribox A -> B sync vs. Syncthing: same workloads, same sizes,
# same run, same disk; prints the ratios distribox/syncthing.
#
# Mounts two Distribox nodes (A and B) on this host in one group (A creates it, B
# joins with A's invite token), listening on 127.0.0.1 only (fixed ports, mDNS off),
# and measures A -> B sync with the workloads of ../shared/bench/syncthing-baseline.sh:
#   a) small_file_latency   one 4 KiB random file, SMALL_REPS (5) times; each + median
#                           (p50)
#   b) small_files          N_SMALL (10000) random 4 KiB files in ~100 subdirectories
#   c) big_file             one BIG_MB MiB random file (1024 = 1 GiB); time and MB/s
#   d) big_edit             1 byte changed in place in the middle of that file; time
#                           and bytes sent
# The nodes are then unmounted, and syncthing-baseline.sh runs with the same N_SMALL,
# BIG_MB, SMALL_REPS and WATCH_DELAY (here 1 s by default, stock Syncthing has 10 s);
# its `metric value unit` lines are parsed and shown next to Distribox's.
#
# Timing (Distribox): content is generated outside the mounts, in the work dir (same
# file system as both data dirs), and flushed with sync. The clock starts immediately
# before the content is copied INTO A's mount (a rename into a FUSE mount from outside
# is not possible, so unlike Syncthing's rename(2) the copy itself is timed): `cp`
# for (a) and (c), `cp -r` of the prepared tree for (b); for (d) immediately before
# the 1-byte in-place write (dd conv=notrunc). The clock stops at the first poll
# (every 20 ms) at which B's mount holds identical content:
#   (a)(c) B's file has the right size, then cmp against the generated file;
#   (b)    every directory on B holds its number of files and all are 4 KiB, then
#          the sha256 of every file is compared with the generated tree (a poll
#          lists directories until the first one still short of files);
#   (d)    B's byte at the offset is the new one, then cmp of the whole file.
# Verification time is not counted. If verification fails, polling goes on (logged)
# and the time is taken at the start of the verification that succeeds.
# One untimed 4 KiB warm-up sync precedes (a), as in the Syncthing script (its time is
# printed as warmup_sync_time). Between measurements the script waits SETTLE_S,
# then until both nodes report versions_pending = chunks_wanted = 0 and B's
# bytes_received stays unchanged for 0.5 s.
# Bytes (Distribox):
#   *_bytes_a_to_b       delta of B's `bytes_received` (`distribox status --json`):
#                        chunk data only, as fetched (the stored chunk blobs, which
#                        are slightly larger than the file data they hold); no
#                        records, requests, framing, encryption (b_to_a: same on A)
#   *_wire_bytes_a_to_b  delta of the TCP payload bytes of A's connections to B
#                        (`ss -ti` bytes_acked / bytes_received of A's sockets):
#                        everything libp2p sends, incl. Noise and yamux framing,
#                        without TCP/IP headers; omitted without ss(8) or when the set
#                        of connections changed during the measurement
# CPU (Distribox): *_cpu_a / *_cpu_b for (b) and (c): user + system CPU seconds of
# each node process from the clock's start to the poll that found the content,
# before the content check (/proc/PID/stat), to see what the two nodes cost together
# on this host. The report divides their sum by the CPUs (nproc; a cgroup CPU
# quota is not taken into account): the wall time that much CPU needs at the least.
# It includes what a FUSE thread spends busy-polling, which gives way when CPUs
# are crowded, so it is close to a floor, not an exact one.
# Syncthing's bytes are BEP payload from its REST API (without TLS overhead).
# MB/s = 10^6 bytes/s; BIG_MB is in MiB; KiB = 1024 bytes.
#
# Network: both Distribox nodes listen on 127.0.0.1 and use --no-mdns. With
# ISOLATE_NET=auto (default), when run as root with unshare(1) and ip(8), this script
# runs in a private network namespace that has only a loopback interface (the
# Syncthing script then makes its own, as it does when run alone).
#
# Usage (as root, from anywhere; nothing is built):
#   bench/sync-bench.sh                          # full run; markdown report on stdout
#   N_SMALL=200 BIG_MB=32 SMALL_REPS=3 SKIP_SYNCTHING=1 bench/sync-bench.sh  # smoke run
# Environment:
#   N_SMALL        number of 4 KiB files for (b)                     (10000; 0 skips b)
#   BIG_MB         size of the big file for (c)/(d), MiB             (1024;  0 skips c,d)
#   SMALL_REPS     repetitions for (a)                               (5)
#   WATCH_DELAY    Syncthing's fsWatcherDelayS, seconds              (1)
#   SKIP_SYNCTHING 1 = Distribox only (ratios n/a)                   (0)
#   WORKDIR        parent of the work dirs of both sides; a real disk, not tmpfs
#                  (needs ~4*BIG_MB free)                            (/var/tmp)
#   SETTLE_S       Distribox: quiet time between measurements, s     (2)
#   ST_SETTLE_S    SETTLE_S for the Syncthing script        (its default: WATCH_DELAY+2)
#   TIMEOUT_S      limit for every single wait, seconds (both sides) (1800)
#   ISOLATE_NET    auto | 1 (require netns) | 0 (never); passed on   (auto)
#   KEEP_WORKDIR   1 keeps the work dirs (data dirs, node logs)      (0)
#   DISTRIBOX_BIN  binary     ($CARGO_TARGET_DIR/debug/distribox; CARGO_TARGET_DIR
#                             defaults to ~/.cache/distribox-target)
#   DISTRIBOX_MOUNT_ARGS  extra words for both `distribox mount`s (word-split)
#   SYNCTHING_BENCH  the baseline script   (<repo>/../shared/bench/syncthing-baseline.sh)
#   SYNCTHING      syncthing binary, passed on to the baseline script  (syncthing)
#   OUT            also write the report to this file
# Output: progress on stderr (both scripts); on stdout a markdown block for
# docs/performance.md: machine, command, a table
#   metric | distribox | syncthing | ratio | goal | verdict
# (ratio = distribox / syncthing on every row: lower is better for times and bytes,
# higher for MB/s), per-run values, and the raw lines of both sides,
#   distribox|syncthing metric_name value unit
# Exit status: 0, or 1 if anything failed (a failed Syncthing run still prints the
# Distribox side).
# Requires: bash >= 5, a distribox binary with networking, fuse3 (fusermount3), jq,
# coreutils (incl. timeout), findutils, diffutils (cmp); optional: util-linux
# (unshare), iproute2 (ip, ss); for the Syncthing side what syncthing-baseline.sh needs
# (syncthing >= 1.19, curl).
# Cleanup: on exit, error or interrupt (trap) both mounts are unmounted (distribox
# unmount, then fusermount3 -u, then umount -l), a node process that outlives its
# mount is stopped by PID, and the work dir is removed (left in place if a mount
# could not be removed).

set -euo pipefail
export LC_ALL=C
shopt -s nullglob

N_SMALL=${N_SMALL:-10000}
BIG_MB=${BIG_MB:-1024}
SMALL_REPS=${SMALL_REPS:-5}
WATCH_DELAY=${WATCH_DELAY:-1}
SKIP_SYNCTHING=${SKIP_SYNCTHING:-0}
WORKDIR=${WORKDIR:-/var/tmp}
SETTLE_S=${SETTLE_S:-2}
ST_SETTLE_S=${ST_SETTLE_S:-}
TIMEOUT_S=${TIMEOUT_S:-1800}
ISOLATE_NET=${ISOLATE_NET:-auto}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
OUT=${OUT:-}
SMALL_SIZE=4096
POLL_S=0.02
CLI_TIMEOUT=30

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(dirname "$HERE")
SYNCTHING_BENCH=${SYNCTHING_BENCH:-$REPO/../shared/bench/syncthing-baseline.sh}

exec {LOGFD}>&2 # progress/errors always reach the original stderr, even inside redirected waits
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&"$LOGFD"; }
die() { log "ERROR: $*"; exit 1; }

for v in N_SMALL BIG_MB SMALL_REPS WATCH_DELAY SETTLE_S TIMEOUT_S; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
[[ -z $ST_SETTLE_S || $ST_SETTLE_S =~ ^[0-9]+$ ]] || die "ST_SETTLE_S must be a non-negative integer"
((SMALL_REPS >= 1)) || die "SMALL_REPS must be >= 1"
((WATCH_DELAY >= 1)) || die "WATCH_DELAY must be >= 1"
[[ $SKIP_SYNCTHING == [01] ]] || die "SKIP_SYNCTHING must be 0 or 1"

# --- optional: re-run inside a loopback-only network namespace --------------------
if [[ -z ${_DBX_SYNC_BENCH_IN_NETNS:-} && $ISOLATE_NET != 0 ]]; then
    if ((EUID == 0)) && command -v unshare >/dev/null && command -v ip >/dev/null &&
        unshare --net true 2>/dev/null; then
        export _DBX_SYNC_BENCH_IN_NETNS=1
        exec unshare --net -- bash -c 'ip link set lo up && exec bash "$@"' bash "${BASH_SOURCE[0]}" "$@"
    elif [[ $ISOLATE_NET == 1 ]]; then
        die "ISOLATE_NET=1 but cannot create a network namespace (needs root, unshare, ip)"
    fi
fi
if [[ -n ${_DBX_SYNC_BENCH_IN_NETNS:-} ]]; then
    NET_NOTE="private network namespace, loopback only"
else
    NET_NOTE="host network namespace; nodes listen on 127.0.0.1 only, mDNS off"
fi
log "network: $NET_NOTE"

for c in jq cmp stat find xargs sha256sum split head od dd df sort awk mktemp timeout fusermount3 sync; do
    command -v "$c" >/dev/null || die "missing required command: $c"
done
if ((!SKIP_SYNCTHING)); then
    [[ -r $SYNCTHING_BENCH ]] || die "Syncthing baseline script not found: $SYNCTHING_BENCH (set SYNCTHING_BENCH, or SKIP_SYNCTHING=1)"
    command -v "${SYNCTHING:-syncthing}" >/dev/null || die "syncthing not found (apt-get install syncthing, or SKIP_SYNCTHING=1)"
fi
HAVE_SS=0
command -v ss >/dev/null && HAVE_SS=1

BIN=${DISTRIBOX_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/distribox-target}/debug/distribox}
[[ -x $BIN ]] || die "distribox binary not found at $BIN (set DISTRIBOX_BIN or CARGO_TARGET_DIR, or build: cargo build)"
BIN=$(cd "$(dirname "$BIN")" && pwd -P)/$(basename "$BIN")
case $BIN in
    */release/distribox) PROFILE=release ;;
    */debug/distribox) PROFILE=debug ;;
    *) PROFILE=unknown ;;
esac

T_START=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# --- work dir and cleanup -----------------------------------------------------------
mkdir -p -- "$WORKDIR"
WORKDIR=$(cd -- "$WORKDIR" && pwd -P)
[[ $WORKDIR != *[[:space:]]* ]] || die "WORKDIR must not contain whitespace: $WORKDIR"
case $(df -PT -- "$WORKDIR" | awk 'NR == 2 { print $2 }') in
    tmpfs | ramfs | overlay | fuse*) log "warning: WORKDIR $WORKDIR is not on a plain disk" ;;
esac
WORK=$(mktemp -d "$WORKDIR/sync-bench.XXXXXX")
STAGE=$WORK/stage
CLI_LOG=$WORK/cli.log
declare -A D_DATA D_MNT D_PORT D_PID
for n in A B; do
    D_DATA[$n]=$WORK/${n,}/data
    D_MNT[$n]=$WORK/${n,}/mnt
    mkdir -p "${D_MNT[$n]}" "${D_DATA[$n]}"
    chmod 0700 "${D_DATA[$n]}"
done
mkdir -p "$STAGE"
MA=${D_MNT[A]}
MB=${D_MNT[B]}

is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
ours() { [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$WORK/"; }

unmount_node() { # A|B; returns 1 if the mount is still there afterwards
    local m=${D_MNT[$1]} rc
    is_mounted "$m" || return 0
    log "unmounting node $1 ($m)"
    rc=0
    timeout -k 5 120 "$BIN" --data-dir "${D_DATA[$1]}" unmount "$m" >>"$CLI_LOG" 2>&1 || rc=$?
    ((rc == 0)) || log "warning: distribox unmount $m failed (exit $rc; see $CLI_LOG)"
    is_mounted "$m" || return 0
    fusermount3 -u "$m" 2>/dev/null || true
    is_mounted "$m" || return 0
    log "warning: falling back to umount -l $m"
    umount -l "$m" || true
    ! is_mounted "$m"
}

stop_node() { # A|B: after the unmount, make sure the node process is gone (by PID)
    local pid=${D_PID[$1]:-} i
    [[ -n $pid ]] || return 0
    for ((i = 0; i < 300; i++)); do ours "$pid" || break; sleep 0.1; done
    if ours "$pid"; then
        log "warning: node $1 (pid $pid) still running 30 s after unmount; sending TERM"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do ours "$pid" || break; sleep 0.1; done
        ours "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    unset "D_PID[$1]"
}

teardown() { # unmount both nodes and stop them; returns 1 if a mount is left
    local ok=0 n
    for n in B A; do unmount_node "$n" || ok=1; done
    for n in B A; do stop_node "$n"; done
    return "$ok"
}

# shellcheck disable=SC2317  # only reached from the EXIT trap (shellcheck 0.9 false positive)
cleanup() {
    local rc=$? n
    trap - EXIT INT TERM
    cd /
    if ((rc != 0)); then
        for n in A B; do
            [[ -s ${D_DATA[$n]}/node.log ]] || continue
            log "last lines of node $n's log (${D_DATA[$n]}/node.log):"
            tail -n 25 "${D_DATA[$n]}/node.log" >&"$LOGFD" || true
        done
        if [[ -s $CLI_LOG ]]; then
            log "last lines of $CLI_LOG:"
            tail -n 10 "$CLI_LOG" >&"$LOGFD" || true
        fi
    fi
    if ! teardown; then
        log "ERROR: a mount is still in place; leaving $WORK as it is"
        exit 1
    fi
    if [[ $KEEP_WORKDIR == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_mb=$((4 * BIG_MB + 4 * N_SMALL * SMALL_SIZE / 1048576 + 500))
free_mb=$(df -Pm -- "$WORK" | awk 'NR == 2 { print $4 }')
((free_mb >= need_mb)) || die "need ~${need_mb} MiB free in $WORKDIR, have ${free_mb} MiB"

# --- ports ------------------------------------------------------------------------------
USED_PORTS=" "
pick_port() {
    local p i
    for ((i = 0; i < 500; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}
D_PORT[A]=$(pick_port); USED_PORTS+="${D_PORT[A]} "
D_PORT[B]=$(pick_port); USED_PORTS+="${D_PORT[B]} "

# --- distribox helpers ------------------------------------------------------------------
dbx() { # A|B args...: the CLI on that node's data dir; stderr goes to CLI_LOG
    local n=$1
    shift
    timeout -k 5 "$CLI_TIMEOUT" "$BIN" --data-dir "${D_DATA[$n]}" "$@" 2>>"$CLI_LOG"
}

check_nodes() {
    local n
    for n in "${!D_PID[@]}"; do
        kill -0 "${D_PID[$n]}" 2>/dev/null ||
            die "distribox node $n (pid ${D_PID[$n]}) died; see ${D_DATA[$n]}/node.log"
    done
}

wait_until() { # description command...
    local desc=$1 deadline=$((${EPOCHREALTIME%.*} + TIMEOUT_S))
    shift
    until "$@" >/dev/null 2>&1; do
        check_nodes
        ((${EPOCHREALTIME%.*} < deadline)) || die "timeout (${TIMEOUT_S}s) waiting for: $desc"
        sleep 0.2
    done
}

mount_node() { # A|B
    local n=$1 out=$WORK/${1,}/mount.out pid
    log "mounting node $n: $BIN --data-dir ${D_DATA[$n]} mount ${D_MNT[$n]} --listen /ip4/127.0.0.1/tcp/${D_PORT[$n]} --no-mdns ${DISTRIBOX_MOUNT_ARGS:-}"
    # Output goes to a file, never a pipe: the background node may keep the fds open.
    # shellcheck disable=SC2086
    "$BIN" --data-dir "${D_DATA[$n]}" mount "${D_MNT[$n]}" --listen "/ip4/127.0.0.1/tcp/${D_PORT[$n]}" \
        --no-mdns ${DISTRIBOX_MOUNT_ARGS:-} >"$out" 2>&1 ||
        die "distribox mount (node $n) failed: $(cat "$out")"
    pid=$(sed -n 's/.*(node pid \([0-9][0-9]*\).*/\1/p' "$out" | head -n 1)
    [[ -n $pid ]] || die "cannot find the node pid in the mount output: $(cat "$out")"
    D_PID[$n]=$pid
    wait_until "node $n's mount in /proc/self/mountinfo" is_mounted "${D_MNT[$n]}"
    log "node $n: $(cat "$out")"
}

status_json() { dbx "$1" status --json; }

field() { # A|B jq-field -> value (integer fields of `status --json`)
    local j v
    j=$(status_json "$1") || die "distribox status (node $1) failed; see $CLI_LOG"
    v=$(jq -r ".$2" <<<"$j")
    [[ $v =~ ^[0-9]+$ ]] || die "bad $2 from node $1: $v"
    echo "$v"
}

# shellcheck disable=SC2317  # online, idle_pair, settled: called through wait_until
online() { status_json "$1" | jq -e '.peers_online >= 1'; }

# shellcheck disable=SC2317
idle_pair() { # both nodes online, nothing pending or wanted
    local sa sb
    sa=$(status_json A) || return 1
    sb=$(status_json B) || return 1
    jq -en --argjson a "$sa" --argjson b "$sb" '
        $a.peers_online >= 1 and $b.peers_online >= 1 and
        $a.versions_pending == 0 and $a.chunks_wanted == 0 and
        $b.versions_pending == 0 and $b.chunks_wanted == 0'
}

# shellcheck disable=SC2317
settled() { # idle, and B received nothing for 0.5 s
    local r0 r1
    idle_pair >/dev/null || return 1
    r0=$(status_json B | jq -r .bytes_received) || return 1
    sleep 0.5
    r1=$(status_json B | jq -r .bytes_received) || return 1
    [[ $r0 == "$r1" ]] && idle_pair
}

settle() {
    sleep "$SETTLE_S"
    wait_until "both nodes idle (nothing pending or wanted, B receiving nothing)" settled
}

wire_snapshot() { # -> "conn-ids a_sent a_received" for A's TCP connections to B, or n/a
    ((HAVE_SS)) || { echo n/a; return 0; }
    ss -tinHO state established "( sport = :${D_PORT[A]} or dport = :${D_PORT[B]} )" 2>/dev/null |
        sort -k3,3 -k4,4 | awk '
        { ids = ids $3 ">" $4 ","
          for (i = 5; i <= NF; i++) {
              if ($i ~ /^bytes_acked:/) { split($i, p, ":"); s += p[2] }
              if ($i ~ /^bytes_received:/) { split($i, p, ":"); r += p[2] } } }
        END { if (ids == "") print "n/a"; else printf "%s %.0f %.0f\n", ids, s, r }'
}

# wire_delta BEFORE AFTER -> sets WIRE_AB WIRE_BA (bytes, or empty if not measurable)
wire_delta() {
    local i0 s0 r0 i1 s1 r1
    WIRE_AB=''
    WIRE_BA=''
    read -r i0 s0 r0 <<<"$1"
    read -r i1 s1 r1 <<<"$2"
    if [[ $i0 == n/a || $i1 == n/a ]]; then
        return 0
    fi
    if [[ $i0 != "$i1" ]]; then
        log "note: A's connections to B changed during the measurement ($i0 -> $i1); no wire bytes"
        return 0
    fi
    WIRE_AB=$((s1 - s0))
    WIRE_BA=$((r1 - r0))
}

# --- measurement helpers ----------------------------------------------------------------
DEADLINE=0
NEXT_NOTE=0
WAIT_DESC=
wait_start() { # description
    WAIT_DESC=$1
    DEADLINE=$((${EPOCHREALTIME%.*} + TIMEOUT_S))
    NEXT_NOTE=$((${EPOCHREALTIME%.*} + 10))
}
wait_tick() { # one poll interval; dies on timeout or a dead node, notes progress every 10 s
    local now=${EPOCHREALTIME%.*} s
    check_nodes
    ((now < DEADLINE)) || die "timeout (${TIMEOUT_S}s) waiting for: $WAIT_DESC"
    if ((now >= NEXT_NOTE)); then
        NEXT_NOTE=$((now + 10))
        s=$(status_json B | jq -c '{peers_online, versions_pending, chunks_wanted, bytes_received}' 2>/dev/null) || s=unavailable
        log "  still waiting for $WAIT_DESC; node B: $s"
    fi
    sleep "$POLL_S"
}

# Poll until dst (on B) has the same content as src; sets ELAPSED (from t0).
wait_file_equal() { # t0 src dst
    local t0=$1 src=$2 dst=$3 want got t_end small=0 last_cmp=0
    want=$(stat -c %s -- "$src") || die "missing $src"
    ((want <= 1048576)) && small=1
    wait_start "$dst"
    while :; do
        got=$(stat -c %s -- "$dst" 2>/dev/null) || got=
        # size equal => candidate; big files are compared at most every 5 s
        if [[ $got == "$want" ]] && ((small || ${EPOCHREALTIME%.*} - last_cmp >= 5)); then
            t_end=$EPOCHREALTIME
            mark_end_cpu
            last_cmp=${t_end%.*}
            if cmp -s -- "$src" "$dst"; then
                ELAPSED=$(elapsed "$t0" "$t_end")
                return 0
            fi
            ((small)) || log "warning: $dst has the right size but other content; polling on"
        fi
        wait_tick
    done
}

byte_at() { # file offset -> decimal value of that byte (empty if unreadable)
    local b
    b=$(od -An -tu1 -j "$2" -N1 -- "$1" 2>/dev/null) || b=
    echo "${b//[[:space:]]/}"
}

# Poll until dst's byte at off is want, then verify the whole file; sets ELAPSED.
wait_byte_then_equal() { # t0 src dst off want
    local t0=$1 src=$2 dst=$3 off=$4 want=$5 t_end last_cmp=0
    wait_start "the new byte at offset $off of $dst"
    while :; do
        if [[ $(byte_at "$dst" "$off") == "$want" ]] && ((${EPOCHREALTIME%.*} - last_cmp >= 5)); then
            t_end=$EPOCHREALTIME
            last_cmp=${t_end%.*}
            if cmp -s -- "$src" "$dst"; then
                ELAPSED=$(elapsed "$t0" "$t_end")
                return 0
            fi
            log "warning: $dst has the new byte but differs elsewhere; polling on"
        fi
        wait_tick
    done
}

manifest() { # dir -> sorted "sha256  path" list
    (cd -- "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum)
}

declare -A D_VAL D_UNIT S_VAL S_UNIT
D_ORDER=()
S_ORDER=()
metric() { D_ORDER+=("$1"); D_VAL[$1]=$2; D_UNIT[$1]=$3; }
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
# node_cpu A|B -> CPU ticks (user + system) the node process has used so far
node_cpu() { awk '{ print $14 + $15 }' "/proc/${D_PID[$1]}/stat" 2>/dev/null || echo 0; }
# mark_end_cpu: both nodes' CPU at the poll that stops the clock, before the content
# check (reading the content back through B's mount is not part of the sync)
mark_end_cpu() { END_CPU_A=$(node_cpu A) END_CPU_B=$(node_cpu B); }
# cpu_metrics PREFIX A0 A1 B0 B1: CPU seconds each node used between two readings
cpu_metrics() {
    metric "$1_cpu_a" "$(awk -v a="$2" -v b="$3" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')" s
    metric "$1_cpu_b" "$(awk -v a="$4" -v b="$5" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')" s
}
kib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1024 }'; }

# --- setup --------------------------------------------------------------------------------
log "distribox: $BIN ($PROFILE build)"
log "work dir $WORK; ports A=${D_PORT[A]} B=${D_PORT[B]}"
log "params N_SMALL=$N_SMALL BIG_MB=$BIG_MB SMALL_REPS=$SMALL_REPS WATCH_DELAY=$WATCH_DELAY SETTLE_S=$SETTLE_S SKIP_SYNCTHING=$SKIP_SYNCTHING"
((HAVE_SS)) || log "note: ss(8) not found; no wire byte counts"

mount_node A
TOKEN=$(dbx A invite) || die "distribox invite failed; see $CLI_LOG"
TOKEN=$(tail -n 1 <<<"$TOKEN")
[[ $TOKEN == dbx1-* ]] || die "unexpected invite token: $TOKEN"
dbx B join "$TOKEN" >>"$CLI_LOG" || die "distribox join failed; see $CLI_LOG"
mount_node B
wait_until "node A sees a peer online" online A
wait_until "node B sees a peer online" online B
log "nodes connected: $(dbx B peers --json | jq -c '[.[] | {node, online, rtt_ms}]' 2>/dev/null || echo '?')"

# --- (a) small file latency -------------------------------------------------------------
head -c "$SMALL_SIZE" /dev/urandom >"$STAGE/warmup.bin"
sync
t0=$EPOCHREALTIME
cp -- "$STAGE/warmup.bin" "$MA/warmup.bin"
wait_file_equal "$t0" "$STAGE/warmup.bin" "$MB/warmup.bin"
metric warmup_sync_time "$ELAPSED" s
log "(a) warm-up file synced in ${ELAPSED}s (not counted)"
settle
LAT=()
for ((r = 1; r <= SMALL_REPS; r++)); do
    f=lat_$r.bin
    head -c "$SMALL_SIZE" /dev/urandom >"$STAGE/$f"
    sync
    t0=$EPOCHREALTIME
    cp -- "$STAGE/$f" "$MA/$f"
    wait_file_equal "$t0" "$STAGE/$f" "$MB/$f"
    LAT+=("$ELAPSED")
    metric "small_file_latency_$r" "$ELAPSED" s
    log "(a) rep $r: 4 KiB file synced in ${ELAPSED}s"
    settle
done
MEDIAN=$(printf '%s\n' "${LAT[@]}" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
metric small_file_latency_median "$MEDIAN" s
log "(a) median ${MEDIAN}s over $SMALL_REPS reps"

# --- (b) many small files ---------------------------------------------------------------
if ((N_SMALL > 0)); then
    NDIRS=$((N_SMALL < 100 ? N_SMALL : 100))
    declare -A EXPECT
    src=$STAGE/small
    log "(b) generating $N_SMALL x 4 KiB files in $NDIRS dirs"
    for ((i = 0; i < NDIRS; i++)); do
        d=$(printf 'd%03d' "$i")
        cnt=$((N_SMALL / NDIRS + (i < N_SMALL % NDIRS ? 1 : 0)))
        EXPECT[$d]=$cnt
        mkdir -p "$src/$d"
        head -c $((cnt * SMALL_SIZE)) /dev/urandom | split -b "$SMALL_SIZE" -a 6 -d - "$src/$d/f"
    done
    manifest "$src" >"$WORK/small.manifest"
    [[ $(wc -l <"$WORK/small.manifest") -eq $N_SMALL ]] || die "generated file count mismatch"
    rx0=$(field B bytes_received)
    w0=$(wire_snapshot)
    sync
    cpu_a0=$(node_cpu A) cpu_b0=$(node_cpu B)
    t0=$EPOCHREALTIME
    cp -r -- "$src" "$MA/small"
    t_copied=$EPOCHREALTIME
    log "(b) copy into A's mount took $(elapsed "$t0" "$t_copied")s"
    # poll: per-directory count of names on B (no forks; finished dirs drop out), then
    # verify every file's content. A poll stops at the first directory still short of
    # files: listing all 100 directories of B's mount every 20 ms loaded B's FUSE
    # threads so much that A's copy took 0.5-0.9 s longer (measured 2026-12-01). The
    # poll at which everything is there still lists every directory left, so the end
    # is found at the same poll as before.
    pending=("${!EXPECT[@]}")
    warned=0
    wait_start "$N_SMALL small files on B"
    while :; do
        next=()
        for d in "${pending[@]}"; do
            if ((${#next[@]})); then
                next+=("$d")
                continue
            fi
            files=("$MB/small/$d"/f*)
            ((${#files[@]} >= EXPECT[$d])) || next+=("$d")
        done
        pending=("${next[@]}")
        # all names there: every file 4 KiB (Distribox may show a new file empty
        # first), then verify the content
        if ((${#pending[@]} == 0)) && [[ -z $(find "$MB/small" -type f ! -size "${SMALL_SIZE}c" -print -quit) ]]; then
            t_end=$EPOCHREALTIME
            mark_end_cpu
            manifest "$MB/small" | cmp -s - "$WORK/small.manifest" && break
            ((warned++)) || log "warning: (b) all files are on B with the right size but the content differs; polling on"
        fi
        wait_tick
    done
    ELAPSED=$(elapsed "$t0" "$t_end")
    cpu_a1=$END_CPU_A cpu_b1=$END_CPU_B
    settle
    rx1=$(field B bytes_received)
    wire_delta "$w0" "$(wire_snapshot)"
    metric param_n_small "$N_SMALL" files
    metric small_files_copy_time "$(elapsed "$t0" "$t_copied")" s
    metric small_files_sync_time "$ELAPSED" s
    metric small_files_rate "$(awk -v n="$N_SMALL" -v t="$ELAPSED" 'BEGIN { printf "%.1f", n / t }')" files/s
    metric small_files_bytes_a_to_b "$((rx1 - rx0))" bytes
    cpu_metrics small_files "$cpu_a0" "$cpu_a1" "$cpu_b0" "$cpu_b1"
    [[ -n $WIRE_AB ]] && metric small_files_wire_bytes_a_to_b "$WIRE_AB" bytes
    log "(b) $N_SMALL files synced in ${ELAPSED}s; B received $((rx1 - rx0)) chunk bytes${WIRE_AB:+, wire A->B $WIRE_AB bytes}"
    rm -rf -- "$src"
fi

# --- (c) one big file -------------------------------------------------------------------
if ((BIG_MB > 0)); then
    BIG_BYTES=$((BIG_MB * 1048576))
    log "(c) generating ${BIG_MB} MiB random file"
    head -c "$BIG_BYTES" /dev/urandom >"$STAGE/big.bin"
    rx0=$(field B bytes_received)
    w0=$(wire_snapshot)
    sync
    cpu_a0=$(node_cpu A) cpu_b0=$(node_cpu B)
    t0=$EPOCHREALTIME
    cp -- "$STAGE/big.bin" "$MA/big.bin"
    t_copied=$EPOCHREALTIME
    log "(c) copy into A's mount took $(elapsed "$t0" "$t_copied")s"
    wait_file_equal "$t0" "$STAGE/big.bin" "$MB/big.bin"
    BIG_T=$ELAPSED
    cpu_a1=$END_CPU_A cpu_b1=$END_CPU_B
    settle
    rx1=$(field B bytes_received)
    wire_delta "$w0" "$(wire_snapshot)"
    metric param_big_size "$BIG_MB" MiB
    metric big_file_copy_time "$(elapsed "$t0" "$t_copied")" s
    metric big_file_sync_time "$BIG_T" s
    metric big_file_throughput "$(awk -v b="$BIG_BYTES" -v t="$BIG_T" 'BEGIN { printf "%.1f", b / t / 1e6 }')" MB/s
    metric big_file_bytes_a_to_b "$((rx1 - rx0))" bytes
    cpu_metrics big_file "$cpu_a0" "$cpu_a1" "$cpu_b0" "$cpu_b1"
    [[ -n $WIRE_AB ]] && metric big_file_wire_bytes_a_to_b "$WIRE_AB" bytes
    log "(c) ${BIG_MB} MiB synced in ${BIG_T}s; B received $((rx1 - rx0)) chunk bytes${WIRE_AB:+, wire A->B $WIRE_AB bytes}"

    # --- (d) 1-byte edit in the middle of the big file ----------------------------------
    off=$((BIG_BYTES / 2))
    old=$(byte_at "$STAGE/big.bin" "$off")
    [[ $old =~ ^[0-9]+$ ]] || die "cannot read byte $off of $STAGE/big.bin"
    [[ $(byte_at "$MA/big.bin" "$off") == "$old" ]] || die "A's big.bin differs from the generated file at $off"
    new=$((255 - old)) # always differs from old
    newbyte() { printf '%b' "\\0$(printf '%03o' "$new")"; }
    newbyte | dd of="$STAGE/big.bin" bs=1 seek="$off" count=1 conv=notrunc status=none # expected content
    sync
    a_rx0=$(field A bytes_received)
    rx0=$(field B bytes_received)
    w0=$(wire_snapshot)
    t0=$EPOCHREALTIME
    newbyte | dd of="$MA/big.bin" bs=1 seek="$off" count=1 conv=notrunc status=none
    wait_byte_then_equal "$t0" "$STAGE/big.bin" "$MB/big.bin" "$off" "$new"
    EDIT_T=$ELAPSED
    settle
    a_rx1=$(field A bytes_received)
    rx1=$(field B bytes_received)
    wire_delta "$w0" "$(wire_snapshot)"
    metric big_edit_sync_time "$EDIT_T" s
    metric big_edit_bytes_a_to_b "$((rx1 - rx0))" bytes
    metric big_edit_bytes_b_to_a "$((a_rx1 - a_rx0))" bytes
    if [[ -n $WIRE_AB ]]; then
        metric big_edit_wire_bytes_a_to_b "$WIRE_AB" bytes
        metric big_edit_wire_bytes_b_to_a "$WIRE_BA" bytes
    fi
    log "(d) 1-byte edit synced in ${EDIT_T}s; chunk bytes A->B $((rx1 - rx0)), B->A $((a_rx1 - a_rx0))${WIRE_AB:+; wire A->B $WIRE_AB, B->A $WIRE_BA}"
fi

b_store=$(field B store_bytes)
metric b_store_bytes "$b_store" bytes
metric distribox_runtime "$(elapsed "$T_START" "$EPOCHREALTIME")" s
log "Distribox side done; unmounting"
teardown || die "could not unmount the Distribox mounts"
if [[ $KEEP_WORKDIR != 1 ]]; then
    rm -rf -- "$STAGE" "$WORK/a" "$WORK/b" # room for the Syncthing side
fi

# --- Syncthing side ---------------------------------------------------------------------
ST_RC=0
ST_VERSION=
if ((!SKIP_SYNCTHING)); then
    ST_VERSION=$("${SYNCTHING:-syncthing}" --version 2>/dev/null | head -n 1) || ST_VERSION='?'
    st_env=(N_SMALL="$N_SMALL" BIG_MB="$BIG_MB" WATCH_DELAY="$WATCH_DELAY" SMALL_REPS="$SMALL_REPS"
        WORKDIR="$WORKDIR" TIMEOUT_S="$TIMEOUT_S" ISOLATE_NET="$ISOLATE_NET" KEEP_WORKDIR="$KEEP_WORKDIR")
    [[ -n $ST_SETTLE_S ]] && st_env+=(SETTLE_S="$ST_SETTLE_S")
    log "running $SYNCTHING_BENCH with ${st_env[*]}"
    env -u SETTLE_S -u _ST_BENCH_IN_NETNS "${st_env[@]}" bash "$SYNCTHING_BENCH" >"$WORK/syncthing.out" || ST_RC=$?
    if ((ST_RC != 0)); then
        log "ERROR: the Syncthing baseline failed (exit $ST_RC); reporting Distribox only"
    fi
    while read -r name value unit extra; do
        [[ -n $name ]] || continue
        if [[ ! $value =~ ^-?[0-9]+(\.[0-9]+)?$ || -z $unit || -n $extra ]]; then
            log "warning: unexpected line from the Syncthing script: $name $value $unit $extra"
            continue
        fi
        S_ORDER+=("$name"); S_VAL[$name]=$value; S_UNIT[$name]=$unit
    done <"$WORK/syncthing.out"
    ((${#S_ORDER[@]} > 0)) || { ((ST_RC != 0)) || ST_RC=1; log "ERROR: no metrics from the Syncthing script"; }
    for m in small_file_latency_median small_files_sync_time big_file_sync_time big_edit_sync_time; do
        if [[ -n ${D_VAL[$m]:-} && -n ${S_VAL[$m]:-} && ${S_UNIT[$m]} != "${D_UNIT[$m]}" ]]; then
            die "unit mismatch for $m: distribox ${D_UNIT[$m]}, syncthing ${S_UNIT[$m]}"
        fi
    done
fi

# --- report -------------------------------------------------------------------------------
# shellcheck source=bench/machine-info.sh
. "$HERE/machine-info.sh"

commit=$(source_commit "$REPO")
cmd="N_SMALL=$N_SMALL BIG_MB=$BIG_MB SMALL_REPS=$SMALL_REPS WATCH_DELAY=$WATCH_DELAY"
((SKIP_SYNCTHING)) && cmd="$cmd SKIP_SYNCTHING=1"
[[ -n ${DISTRIBOX_MOUNT_ARGS:-} ]] && cmd="$cmd DISTRIBOX_MOUNT_ARGS='$DISTRIBOX_MOUNT_ARGS'"
cmd="$cmd bench/sync-bench.sh"

fmt() { # value unit -> display
    case $2 in
        s) printf '%.3f s' "$1" ;;
        bytes) printf '%s B (%s KiB)' "$1" "$(kib "$1")" ;;
        *) printf '%s %s' "$1" "$2" ;;
    esac
}
ratio_of() { awk -v d="$1" -v s="$2" 'BEGIN { if (s <= 0) print "n/a"; else if (d / s < 1) printf "%.3f", d / s; else printf "%.2f", d / s }'; }

# row LABEL DMETRIC SMETRIC [GOAL_KIND GOAL_VALUE GOAL_TEXT]
#   GOAL_KIND: abs_lt (distribox < value), abs_le (distribox <= value), ratio_le
row() {
    local label=$1 dm=$2 sm=$3 gk=${4:-} gv=${5:-} gt=${6:-} dv sv dcell scell ratio=n/a verdict=
    dv=${D_VAL[$dm]:-}
    sv=
    if [[ -n $sm ]]; then sv=${S_VAL[$sm]:-}; fi
    [[ -n $dv || -n $sv ]] || return 0
    dcell=n/a; scell=n/a
    [[ -n $dv ]] && dcell=$(fmt "$dv" "${D_UNIT[$dm]}")
    [[ -n $sv ]] && scell=$(fmt "$sv" "${S_UNIT[$sm]}")
    [[ -n $dv && -n $sv ]] && ratio=$(ratio_of "$dv" "$sv")
    if [[ -n $gk && -n $dv ]]; then
        case $gk in
            abs_lt) verdict=$(awk -v d="$dv" -v g="$gv" 'BEGIN { print (d < g) ? "met" : "**missed**" }') ;;
            abs_le) verdict=$(awk -v d="$dv" -v g="$gv" 'BEGIN { print (d <= g) ? "met" : "**missed**" }') ;;
            ratio_le)
                if [[ $ratio == n/a ]]; then
                    verdict=n/a
                else
                    verdict=$(awk -v d="$dv" -v s="$sv" -v g="$gv" 'BEGIN { print (d / s <= g) ? "met" : "**missed**" }')
                fi
                ;;
        esac
    fi
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$dcell" "$scell" "$ratio" "$gt" "$verdict"
}

runs() { # D|S -> "v1 v2 ..." (the small_file_latency_N values of that side)
    local side=$1 r out=
    for ((r = 1; r <= SMALL_REPS; r++)); do
        if [[ $side == D ]]; then out+="${D_VAL[small_file_latency_$r]:-?} "; else out+="${S_VAL[small_file_latency_$r]:-?} "; fi
    done
    echo "${out% }"
}

# cpu_floor PREFIX LABEL GOAL: one report line with both nodes' CPU for a metric, the
# wall time that CPU needs on this host's CPUs at the least, and the goal's time
cpu_floor() {
    local a=${D_VAL[$1_cpu_a]:-} b=${D_VAL[$1_cpu_b]:-} st=${S_VAL[$1_sync_time]:-} n
    [[ -n $a && -n $b ]] || return 0
    n=$(nproc)
    awk -v a="$a" -v b="$b" -v n="$n" -v st="$st" -v g="$3" -v l="$2" 'BEGIN {
        printf "- Distribox %s: the nodes used %.2f s (A) + %.2f s (B) of CPU until the content was there; on %d CPUs that alone takes ≥ %.2f s", l, a, b, n, (a + b) / n
        if (st != "") printf " (%.2f× Syncthing; the goal, %s×, is %.2f s)", (a + b) / n / st, g, st * g
        print ""
    }'
}

report() {
    local m big_label="big file"
    [[ -n ${D_VAL[param_big_size]:-} ]] && big_label="${BIG_MB} MiB file"
    echo "### sync-bench: Distribox vs. Syncthing, A → B on one host ($(date -u +%Y-%m-%d))"
    echo
    machine_info "$WORKDIR"
    echo "- distribox: commit $commit, $PROFILE build"
    if ((SKIP_SYNCTHING)); then
        echo "- syncthing: skipped (SKIP_SYNCTHING=1)"
    else
        echo "- syncthing: $ST_VERSION, fsWatcherDelayS=$WATCH_DELAY$( ((ST_RC == 0)) || echo ", **run failed (exit $ST_RC)**")"
    fi
    echo "- command (as root, repo root): \`$cmd\`"
    echo "- network: $NET_NOTE (Distribox side)"
    echo "- clock: from just before the copy into A's mount (Syncthing: the rename into A's folder) to the first 20 ms poll at which B has identical content; verification not counted"
    echo "- ratio = distribox / syncthing: lower is better for times and bytes, higher for MB/s"
    echo
    echo "| metric | distribox | syncthing | ratio | goal | |"
    echo "|---|---:|---:|---:|---|---|"
    row "4 KiB file propagation, p50 of $SMALL_REPS" small_file_latency_median small_file_latency_median abs_lt 0.1 "< 100 ms"
    row "$N_SMALL × 4 KiB files" small_files_sync_time small_files_sync_time ratio_le 0.25 "≤ 0.25×"
    row "$N_SMALL × 4 KiB files, rate" small_files_rate small_files_rate
    row "$N_SMALL × 4 KiB files, bytes A→B ¹" small_files_bytes_a_to_b small_files_bytes_a_to_b
    row "$N_SMALL × 4 KiB files, wire bytes A→B ²" small_files_wire_bytes_a_to_b ""
    row "$big_label" big_file_sync_time big_file_sync_time ratio_le 0.6 "≤ 0.6×"
    row "$big_label, throughput" big_file_throughput big_file_throughput
    row "$big_label, bytes A→B ¹" big_file_bytes_a_to_b big_file_bytes_a_to_b
    row "$big_label, wire bytes A→B ²" big_file_wire_bytes_a_to_b ""
    row "1-byte edit in the middle" big_edit_sync_time big_edit_sync_time ratio_le 0.1 "≤ 0.1×"
    row "1-byte edit, bytes A→B ¹" big_edit_bytes_a_to_b big_edit_bytes_a_to_b abs_le 307200 "≤ 300 KiB"
    row "1-byte edit, bytes B→A ¹" big_edit_bytes_b_to_a big_edit_bytes_b_to_a
    row "1-byte edit, wire bytes A→B ²" big_edit_wire_bytes_a_to_b "" abs_le 307200 "≤ 300 KiB"
    row "1-byte edit, wire bytes B→A ²" big_edit_wire_bytes_b_to_a ""
    echo
    echo "¹ Distribox: chunk data bytes the receiver fetched (\`bytes_received\` in \`distribox status --json\`: stored chunk blobs, slightly larger than the file data; no records, requests, framing or encryption). Syncthing: BEP bytes from its REST API (without TLS)."
    echo "² Distribox only: TCP payload bytes of A's connections to B (\`ss -ti\`), i.e. everything libp2p sent incl. Noise/yamux framing, without TCP/IP headers."
    echo
    echo "Per-run values (s):"
    echo
    echo "- small_file_latency: distribox [$(runs D)]${S_VAL[small_file_latency_median]:+ syncthing [$(runs S)]}"
    if [[ -n ${D_VAL[big_edit_sync_time]:-} ]]; then
        echo "- Distribox 1-byte edit time / its own big-file time: $(ratio_of "${D_VAL[big_edit_sync_time]}" "${D_VAL[big_file_sync_time]}")"
    fi
    [[ -n ${D_VAL[small_files_copy_time]:-} ]] && echo "- Distribox: \`cp -r\` into A's mount took ${D_VAL[small_files_copy_time]} s of the ${D_VAL[small_files_sync_time]} s (b)"
    [[ -n ${D_VAL[big_file_copy_time]:-} ]] && echo "- Distribox: \`cp\` into A's mount took ${D_VAL[big_file_copy_time]} s of the ${D_VAL[big_file_sync_time]} s (c)"
    cpu_floor small_files "(b)" 0.25
    cpu_floor big_file "(c)" 0.6
    echo
    echo "Raw metrics:"
    echo
    echo '```'
    for m in "${D_ORDER[@]}"; do printf 'distribox %s %s %s\n' "$m" "${D_VAL[$m]}" "${D_UNIT[$m]}"; done
    for m in "${S_ORDER[@]}"; do printf 'syncthing %s %s %s\n' "$m" "${S_VAL[$m]}" "${S_UNIT[$m]}"; done
    echo '```'
}

if [[ -n $OUT ]]; then
    report | tee "$OUT"
else
    report
fi
log "done"
exit $((ST_RC != 0))
