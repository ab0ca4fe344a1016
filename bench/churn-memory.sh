#!/usr/bin/env bash
# churn-memory.sh - a node's memory while files come and go: ROUNDS rounds (default
# 30) of "create N files (default 20000) of 100 bytes in a new directory, rm -r it"
# on one mount, printing `distribox status`'s memory line after each round (resident
# memory, what RocksDB holds of it, inode numbers mapped, entry states cached).
# Run as root (FUSE). Usage: ROUNDS=12 N=20000 bench/churn-memory.sh
# (DISTRIBOX_BIN overrides the binary; the work dir under WORKDIR is removed on exit.)
set -euo pipefail
ROUNDS=${ROUNDS:-30}
N=${N:-20000}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
mount_node
for r in $(seq 1 "$ROUNDS"); do
    make_files "$W/m/r$r" "$N"
    rm -r "$W/m/r$r"
    echo "round $r ($((r * N)) files): $("$B" --data-dir "$W/d" status | grep '^memory')"
done
