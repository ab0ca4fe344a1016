#!/usr/bin/env bash
# cp-inside.sh - `cp` of a large file inside a mount: RUNS runs (default 3), each on a
# fresh mount: write MB MiB (default 1024) of random bytes with dd + fsync, drop the
# page cache, time `cp big big2` inside the mount, compare the copy with the source,
# and print the node's read+write bytes during the cp (rchar + wchar, /proc/PID/io).
# Run as root (FUSE, drop_caches). Usage: MB=1024 RUNS=3 bench/cp-inside.sh
# (DISTRIBOX_BIN overrides the binary; the work dir under WORKDIR is removed on exit.)
set -euo pipefail
MB=${MB:-1024}
RUNS=${RUNS:-3}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
SRC=$(mktemp /dev/shm/dbxcp-src.XXXX)
CLEANUP_EXTRA=("$SRC")
head -c $((MB << 20)) /dev/urandom >"$SRC"
for r in $(seq 1 "$RUNS"); do
    rm -rf "$W/d" "$W/m" && mkdir -p "$W/m"
    mount_node
    pid=$PID
    dd if="$SRC" of="$W/m/big" bs=1M conv=fsync status=none
    sync && echo 3 >/proc/sys/vm/drop_caches
    io0=$(node_io "$pid")
    t0=$(date +%s%N)
    cp "$W/m/big" "$W/m/big2"
    t1=$(date +%s%N)
    io1=$(node_io "$pid")
    same=$(cmp -s "$SRC" "$W/m/big2" && echo "equal to the source" || echo "DIFFERENT from the source")
    printf 'run %d: cp of %d MiB inside the mount took %s s, node I/O %d MiB, copy %s\n' \
        "$r" "$MB" "$(secs $((t1 - t0)))" $(((io1 - io0) >> 20)) "$same"
    "$B" --data-dir "$W/d" unmount "$W/m" >/dev/null
done
