#!/usr/bin/env bash
# conformance.sh - run bench/fs-conformance.sh (pjdfstest, fsx, stress) against a
# fresh Distribox mount.
#
# Builds nothing: uses DISTRIBOX_BIN, else $CARGO_TARGET_DIR/debug/distribox, else
# ~/.cache/distribox-target/debug/distribox, else ./target/debug/distribox.
# Creates a temp dir (TMPDIR, default /tmp) holding a new data dir and an empty mount
# dir, runs `distribox --data-dir DATA mount MNT --allow-other` (allow_other +
# default_permissions, so pjdfstest's dummy users nobody/tests can reach the mount),
# runs fs-conformance.sh on MNT, and always unmounts on exit (distribox unmount, then
# fusermount3 -u, then umount -l) and removes the temp dir.
#
# Usage (as root; pjdfstest needs root, see fs-conformance.sh):
#   bench/conformance.sh                          # all sections
#   FSC_SECTIONS=stress STRESS_OPS=500 bench/conformance.sh
#   FSC_REMOUNT=1 bench/conformance.sh            # unmount + remount before stress verify
# Environment (besides all of fs-conformance.sh's knobs: FSC_SECTIONS, FSX_OPS,
# STRESS_OPS, PJDFSTEST_XFAIL, PJDFSTEST_EXCLUDE, ... - see its header):
#   DISTRIBOX_BIN   binary to test
#   FSC_LOG_DIR     logs go here (default ${TMPDIR:-/tmp}/distribox-conformance-logs;
#                   kept after the run): conformance.log (everything printed),
#                   pjdfstest.log, fsx.log, stress.log, ..., pjdfstest-failed.txt
#                   (one failed test name a line), distribox.log (output of the
#                   distribox commands), node-logs/ (*.log files found in the data dir)
#   FSC_REMOUNT=1   set FSC_REMOUNT_CMD to unmount and remount the same data dir
#                   (checks that the stress run's files persist); an explicitly set
#                   FSC_REMOUNT_CMD is passed through unchanged
#   DISTRIBOX_MOUNT_ARGS  extra words for `distribox mount` (word-split)
#   KEEP_WORKDIR=1  keep the temp dir (data dir) afterwards
# Output: fs-conformance.sh's output, then a summary: the `pjdfstest: N passed, ...`,
# `fsx: ...`, `stress: ...`, `conformance: ...` lines and the failed pjdfstest names.
# Exit status: that of fs-conformance.sh (0 all sections passed, 1 a section failed,
# 2 setup error); 2 also if the mount could not be set up.

set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(dirname "$HERE")

log() { printf 'conformance.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

find_bin() {
    local c
    if [ -n "${DISTRIBOX_BIN:-}" ]; then
        [ -x "$DISTRIBOX_BIN" ] || return 1
        echo "$DISTRIBOX_BIN"; return 0
    fi
    for c in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/debug/distribox"} \
        "$HOME/.cache/distribox-target/debug/distribox" "$REPO/target/debug/distribox"; do
        if [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    return 1
}
BIN=$(find_bin) || die "distribox binary not found (set DISTRIBOX_BIN or CARGO_TARGET_DIR, run cargo build)"
BIN=$(cd "$(dirname "$BIN")" && pwd -P)/$(basename "$BIN")
[ -f "$HERE/fs-conformance.sh" ] || die "missing $HERE/fs-conformance.sh"
[ -e /dev/fuse ] || die "/dev/fuse does not exist (no FUSE in this machine/container?)"
command -v fusermount3 >/dev/null || die "fusermount3 not found (apt-get install fuse3)"
[ "$(id -u)" = 0 ] || log "warning: not root: pjdfstest will skip/fail many tests, and allow_other needs user_allow_other in /etc/fuse.conf"

LOG_DIR=${FSC_LOG_DIR:-${TMPDIR:-/tmp}/distribox-conformance-logs}
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd -P)
# leftovers of a previous run into the same dir (the other logs are overwritten)
rm -rf "$LOG_DIR/fsx-artifacts" "$LOG_DIR/node-logs"
rm -f "$LOG_DIR/pjdfstest-failed.txt" "$LOG_DIR/distribox.log" "$LOG_DIR/pjdfstest.log" \
    "$LOG_DIR/fsx.log" "$LOG_DIR/stress.log" "$LOG_DIR/stress-manifest.json"
CLOG="$LOG_DIR/conformance.log"
NODE_LOG="$LOG_DIR/distribox.log"

# Short on purpose: pjdfstest binds Unix sockets ~60 bytes below the mount, and
# sun_path holds only 107 (a long mount path fails every socket test in bind).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dbx.XXXXXX")
# mktemp makes it 0700: the dummy users must be able to walk down to the mount
chmod 0755 "$WORK"
DATA="$WORK/data"
MNT="$WORK/m"
mkdir -p "$DATA" "$MNT"
chmod 0700 "$DATA"

is_mounted() { awk -v m="$MNT" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

MOUNT_ARGS=(--allow-other)
# shellcheck disable=SC2206
[ -n "${DISTRIBOX_MOUNT_ARGS:-}" ] && MOUNT_ARGS+=(${DISTRIBOX_MOUNT_ARGS})

mount_fs() {
    log "mounting: $BIN --data-dir $DATA mount $MNT ${MOUNT_ARGS[*]}"
    # To a file, never a pipe: the background node may keep the fds open.
    local rc=0
    "$BIN" --data-dir "$DATA" mount "$MNT" "${MOUNT_ARGS[@]}" >>"$NODE_LOG" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        tail -n 20 "$NODE_LOG" >&2
        die "distribox mount failed (exit $rc)"
    fi
    for _ in $(seq 50); do is_mounted && break; sleep 0.2; done
    is_mounted || die "distribox mount returned 0 but $MNT is not in /proc/self/mountinfo"
}

# shellcheck disable=SC2317  # only reached from the EXIT trap (shellcheck 0.9 false positive)
unmount_fs() {
    is_mounted || return 0
    log "unmounting $MNT"
    timeout -k 5 120 "$BIN" --data-dir "$DATA" unmount "$MNT" >>"$NODE_LOG" 2>&1 \
        || log "warning: distribox unmount failed (exit $?)"
    is_mounted || return 0
    log "warning: falling back to fusermount3 -u"
    fusermount3 -u "$MNT" 2>>"$NODE_LOG" || true
    is_mounted || return 0
    log "warning: falling back to umount -l"
    umount -l "$MNT" || true
    ! is_mounted
}

# shellcheck disable=SC2317
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    cd /
    if ! unmount_fs; then
        log "ERROR: $MNT is still mounted; leaving $WORK in place"
        [ "$rc" = 0 ] && rc=2
    else
        # node logs, wherever the node keeps them in its data dir
        if [ -d "$DATA" ]; then
            while IFS= read -r -d '' f; do
                mkdir -p "$LOG_DIR/node-logs"
                cp -- "$f" "$LOG_DIR/node-logs/" 2>/dev/null || true
            done < <(find "$DATA" -type f -name '*.log' ! -regex '.*/[0-9]+\.log' -size -100M -print0 2>/dev/null)
        fi
        if grep -qs 'panicked' "$NODE_LOG" "$LOG_DIR"/node-logs/*.log; then
            log "WARNING: a distribox log contains 'panicked' (see $LOG_DIR)"
        fi
        if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
            log "temp dir kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd /
mount_fs

if [ "${FSC_REMOUNT:-0}" = 1 ] && [ -z "${FSC_REMOUNT_CMD:-}" ]; then
    remount="$(printf '%q ' "$BIN" --data-dir "$DATA" unmount "$MNT") >>$(printf '%q' "$NODE_LOG") 2>&1"
    remount="$remount && $(printf '%q ' "$BIN" --data-dir "$DATA" mount "$MNT" "${MOUNT_ARGS[@]}") >>$(printf '%q' "$NODE_LOG") 2>&1"
    export FSC_REMOUNT_CMD="$remount"
    log "FSC_REMOUNT_CMD: $FSC_REMOUNT_CMD"
fi

export FSC_LOG_DIR="$LOG_DIR"
set +e
bash "$HERE/fs-conformance.sh" "$MNT" 2>&1 | tee "$CLOG"
rc=${PIPESTATUS[0]}
set -e

sed -n 's/^  FAILED: //p' "$CLOG" >"$LOG_DIR/pjdfstest-failed.txt"
nfailed=$(wc -l <"$LOG_DIR/pjdfstest-failed.txt")
{
    echo
    echo "==== summary (binary: $BIN; logs: $LOG_DIR)"
    grep -E '^(pjdfstest|fsx|stress|conformance): ' "$CLOG" || echo "(no summary lines: fs-conformance.sh exited $rc early)"
    if [ "$nfailed" -gt 0 ]; then
        echo "failed pjdfstest tests ($nfailed, also in $LOG_DIR/pjdfstest-failed.txt):"
        sed 's/^/  /' "$LOG_DIR/pjdfstest-failed.txt"
    fi
} | tee -a "$CLOG"
exit "$rc"
