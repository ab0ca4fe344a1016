#!/usr/bin/env bash
# history-walks.sh - what walks over a large history cost the node: ROUNDS rounds
# (default 10) of "create N files (default 20000) of 100 bytes in a new directory,
# rm -r it" on one mount (2 version records per file), then `distribox gc` and
# `distribox log`, each with the node's peak memory reset before it (VmHWM, via
# /proc/PID/clear_refs) and its resident and peak memory after; then DIRS
# directories (default 100) of 1000 live files and three `distribox conflicts`
# calls in a row, timed. Run as root (FUSE, clear_refs).
# Usage: ROUNDS=10 N=20000 DIRS=100 bench/history-walks.sh
# (DISTRIBOX_BIN overrides the binary; the work dir under WORKDIR is removed on exit.)
set -euo pipefail
ROUNDS=${ROUNDS:-10}
N=${N:-20000}
DIRS=${DIRS:-100}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
mount_node
pid=$PID
mem() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MiB  ", $1, $2 / 1024 }' "/proc/$pid/status"; }
timed() { # prints the seconds a command took
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    printf '%d.%03d s' $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 1000000 % 1000))
}
for r in $(seq 1 "$ROUNDS"); do
    make_files "$W/m/r$r" "$N"
    rm -r "$W/m/r$r"
done
echo "after $((ROUNDS * N)) files created and deleted: $(mem)"
for cmd in gc log; do
    echo 5 >"/proc/$pid/clear_refs"
    t=$(timed "$B" --data-dir "$W/d" "$cmd")
    echo "distribox $cmd: $t, then $(mem)"
done
for d in $(seq 1 "$DIRS"); do
    make_files "$W/m/d$d" 1000
done
for i in 1 2 3; do
    echo "distribox conflicts over $((DIRS * 1000)) files, call $i: $(timed "$B" --data-dir "$W/d" conflicts)"
done
