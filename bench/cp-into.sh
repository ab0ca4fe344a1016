#!/usr/bin/env bash
# cp-into.sh - `cp` of a large file from the native disk into a mount, against the
# same `cp` onto the native disk in the same run: RUNS runs (default 3), each on a
# fresh mount. The source (MB MiB of random bytes, default 1024) is read once first,
# so it comes from the page cache every time. Prints both times, their ratio, and
# how much the page cache grew during the cp into the mount (write-only handles
# bypass it, see DESIGN.md "Write-only handles bypass the page cache").
# Run as root (FUSE). Usage: MB=1024 RUNS=3 bench/cp-into.sh
# (DISTRIBOX_BIN overrides the binary; the work dir under WORKDIR is removed on exit.)
set -euo pipefail
MB=${MB:-1024}
RUNS=${RUNS:-3}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
SRC="$W/src.bin"
head -c $((MB << 20)) /dev/urandom >"$SRC"
cat "$SRC" >/dev/null
cached() { awk '/^Cached:/ { print $2 }' /proc/meminfo; }
for r in $(seq 1 "$RUNS"); do
    rm -rf "$W/d" "$W/m" "$W/native.bin" && mkdir -p "$W/m"
    sync
    t0=$(date +%s%N)
    cp "$SRC" "$W/native.bin"
    t1=$(date +%s%N)
    rm -f "$W/native.bin"
    mount_node
    sync
    c0=$(cached)
    t2=$(date +%s%N)
    cp "$SRC" "$W/m/big"
    t3=$(date +%s%N)
    c1=$(cached)
    same=$(cmp -s "$SRC" "$W/m/big" && echo "equal to the source" || echo "DIFFERENT from the source")
    printf 'run %d: cp of %d MiB: native %s s, into the mount %s s (%s x native speed), page cache +%d MiB, copy %s\n' \
        "$r" "$MB" "$(secs $((t1 - t0)))" "$(secs $((t3 - t2)))" \
        "$(awk -v n=$((t1 - t0)) -v m=$((t3 - t2)) 'BEGIN { printf "%.2f", n / m }')" \
        $(((c1 - c0) >> 10)) "$same"
    "$B" --data-dir "$W/d" unmount "$W/m" >/dev/null
done
