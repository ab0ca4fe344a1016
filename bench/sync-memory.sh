#!/bin/bash
# sync-memory.sh - peak RSS (VmHWM) of the sending and the receiving node while one
# MB-MiB random file (default 4096) syncs A -> B over 127.0.0.1. Needs 3*MB free in /var/tmp.
# Usage: MB=10240 bench/sync-memory.sh   (DISTRIBOX_BIN overrides the binary)
set -euo pipefail
B=${DISTRIBOX_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/distribox-target}/debug/distribox}
W=$(mktemp -d /var/tmp/dbxmem.XXXX)
mkdir -p $W/a/m $W/b/m
$B --data-dir $W/a/d mount $W/a/m --listen /ip4/127.0.0.1/tcp/27101 --no-mdns
T=$($B --data-dir $W/a/d invite)
$B --data-dir $W/b/d join "$T" >/dev/null
$B --data-dir $W/b/d mount $W/b/m --listen /ip4/127.0.0.1/tcp/27102 --no-mdns
MB=${MB:-4096}
head -c $((MB<<20)) /dev/urandom > $W/src.bin
start=$(date +%s.%N)
cp $W/src.bin $W/a/m/big.bin
while [ "$(stat -c %s $W/b/m/big.bin 2>/dev/null || echo 0)" != $((MB<<20)) ]; do sleep 0.2; done
end=$(date +%s.%N)
cmp $W/src.bin $W/b/m/big.bin && echo "content identical"
pa=$($B --data-dir $W/a/d status --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["pid"])')
pb=$($B --data-dir $W/b/d status --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["pid"])')
echo "size ${MB} MiB; copy+sync $(echo "$end - $start" | bc) s"
echo "sender   VmHWM: $(grep VmHWM /proc/$pa/status)"
echo "receiver VmHWM: $(grep VmHWM /proc/$pb/status)"
$B --data-dir $W/a/d unmount $W/a/m; $B --data-dir $W/b/d unmount $W/b/m
rm -rf $W
