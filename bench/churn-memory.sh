#!/usr/bin/env bash
# churn-memory.sh - a node's memory while files come and go: ROUNDS rounds (default
# 30) of "create N files (default 20000) of 100 bytes in a new directory, rm -r it"
# on one mount, printing `distribox status`'s memory line after each round (resident
# memory, what RocksDB holds of it, inode numbers mapped, entry states cached).
# Run as root (FUSE). Usage: ROUNDS=12 N=20000 bench/churn-memory.sh
# (DISTRIBOX_BIN overrides the binary; the work dir under WORKDIR is removed on exit.)
set -euo pipefail
B=${DISTRIBOX_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/distribox-target}/debug/distribox}
ROUNDS=${ROUNDS:-30}
N=${N:-20000}
W=$(mktemp -d "${WORKDIR:-/var/tmp}/dbxchurn.XXXX")
cleanup() {
    "$B" --data-dir "$W/d" unmount "$W/m" >/dev/null 2>&1 || fusermount3 -u "$W/m" 2>/dev/null || true
    rm -rf -- "$W"
}
trap cleanup EXIT
mkdir -p "$W/m"
"$B" --data-dir "$W/d" mount "$W/m" --no-net >/dev/null
for r in $(seq 1 "$ROUNDS"); do
    python3 - "$W/m/r$r" "$N" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(b"x" * 100)
PY
    rm -r "$W/m/r$r"
    echo "round $r ($((r * N)) files): $("$B" --data-dir "$W/d" status | grep '^memory')"
done
