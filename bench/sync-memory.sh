#!/usr/bin/env bash
# sync-memory.sh - peak RSS (VmHWM) of the sending and the receiving node while one
# MB-MiB random file (default 4096) syncs A -> B over 127.0.0.1.
# Needs 3*MB free in WORKDIR (default /var/tmp); run as root (FUSE).
# Usage: MB=10240 bench/sync-memory.sh   (DISTRIBOX_BIN overrides the binary)
# Output: the time from the start of the copy into A's mount until B holds the whole
# file, and both nodes' VmHWM lines. Mounts and the work dir are removed on exit.
set -euo pipefail
B=${DISTRIBOX_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/distribox-target}/debug/distribox}
MB=${MB:-4096}
W=$(mktemp -d "${WORKDIR:-/var/tmp}/dbxmem.XXXX")
cleanup() {
    for n in a b; do
        "$B" --data-dir "$W/$n/d" unmount "$W/$n/m" >/dev/null 2>&1 || fusermount3 -u "$W/$n/m" 2>/dev/null || true
    done
    rm -rf -- "$W"
}
trap cleanup EXIT
mkdir -p "$W/a/m" "$W/b/m"
"$B" --data-dir "$W/a/d" mount "$W/a/m" --listen /ip4/127.0.0.1/tcp/27101 --no-mdns
token=$("$B" --data-dir "$W/a/d" invite)
"$B" --data-dir "$W/b/d" join "$token" >/dev/null
"$B" --data-dir "$W/b/d" mount "$W/b/m" --listen /ip4/127.0.0.1/tcp/27102 --no-mdns
head -c $((MB << 20)) /dev/urandom >"$W/src.bin"
start=$EPOCHREALTIME
cp "$W/src.bin" "$W/a/m/big.bin"
while [ "$(stat -c %s "$W/b/m/big.bin" 2>/dev/null || echo 0)" != $((MB << 20)) ]; do sleep 0.2; done
end=$EPOCHREALTIME
cmp "$W/src.bin" "$W/b/m/big.bin" && echo "content identical"
pid_of() { "$B" --data-dir "$1" status --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["pid"])'; }
pa=$(pid_of "$W/a/d")
pb=$(pid_of "$W/b/d")
echo "size ${MB} MiB; copy+sync $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s"
echo "sender   $(grep VmHWM "/proc/$pa/status")"
echo "receiver $(grep VmHWM "/proc/$pb/status")"
