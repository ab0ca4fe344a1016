#!/usr/bin/env bash
# warm-reread.sh - reading files again whose pages the kernel still caches: one MB MiB
# file (default 1024) and SMALL files of 8 KiB (default 2000), on the native disk and
# in a mount in the same run. For each: write, sync, drop the page cache, then read
# everything RUNS+1 times with `cat` (default RUNS=3) without dropping caches again.
# The first read is cold; the others show whether an open keeps the cached pages
# (the mount says FOPEN_KEEP_CACHE for a file whose content did not change). Prints
# each read's time and the node's read+write bytes (rchar + wchar, /proc/PID/io).
# Run as root (FUSE, drop_caches). Usage: MB=1024 SMALL=2000 RUNS=3 bench/warm-reread.sh
# (DISTRIBOX_BIN overrides the binary; the work dir under WORKDIR is removed on exit.)
set -euo pipefail
MB=${MB:-1024}
SMALL=${SMALL:-2000}
RUNS=${RUNS:-3}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
mount_node
mkdir -p "$W/native"
for root in "$W/native" "$W/m"; do
    where=$([ "$root" = "$W/m" ] && echo distribox || echo native)
    head -c $((MB << 20)) /dev/urandom >"$root/big"
    mkdir "$root/s"
    for i in $(seq 1 "$SMALL"); do head -c 8192 /dev/urandom >"$root/s/f$i"; done
    sync && echo 3 >/proc/sys/vm/drop_caches
    for r in $(seq 0 "$RUNS"); do
        io0=$(node_io "$PID")
        t0=$(date +%s%N)
        cat "$root/big" >/dev/null
        t1=$(date +%s%N)
        cat "$root"/s/* >/dev/null
        t2=$(date +%s%N)
        io1=$(node_io "$PID")
        kind=$([ "$r" = 0 ] && echo "cold" || echo "warm")
        printf '%-9s read %d (%s): %d MiB file %s s, %d files of 8 KiB %s s, node I/O %d MiB\n' \
            "$where" "$r" "$kind" "$MB" "$(secs $((t1 - t0)))" "$SMALL" "$(secs $((t2 - t1)))" $(((io1 - io0) >> 20))
    done
done
