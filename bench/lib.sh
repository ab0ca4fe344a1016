# bench/lib.sh - what the single-mount bench scripts (churn-memory.sh,
# history-walks.sh, cp-inside.sh, warm-reread.sh) share; sourced, not run.
#   B        the distribox binary (DISTRIBOX_BIN, else the debug build)
#   W        a fresh work dir under WORKDIR (default /var/tmp), removed on exit
#            together with anything listed in CLEANUP_EXTRA, after unmounting W/m
#   mount_node            mounts data dir W/d at W/m (no network, no GUI); sets PID
#   make_files DIR COUNT  COUNT files of 100 bytes in a new directory DIR
#   node_io PID           bytes process PID has read and written (rchar + wchar)
#   secs NS               NS nanoseconds as seconds with 3 decimals
B=${DISTRIBOX_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/distribox-target}/debug/distribox}
W=$(mktemp -d "${WORKDIR:-/var/tmp}/dbxbench.XXXX")
CLEANUP_EXTRA=()
cleanup() {
    "$B" --data-dir "$W/d" unmount "$W/m" >/dev/null 2>&1 || fusermount3 -u "$W/m" 2>/dev/null || true
    rm -rf -- "$W" "${CLEANUP_EXTRA[@]}"
}
trap cleanup EXIT
mkdir -p "$W/m"

mount_node() {
    local out
    out=$("$B" --data-dir "$W/d" mount "$W/m" --no-net --gui-listen off)
    PID=${out##*node pid }
    PID=${PID%%,*}
}

make_files() {
    python3 - "$1" "$2" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(b"x" * 100)
PY
}

node_io() { awk '/^(rchar|wchar):/ { s += $2 } END { printf "%.0f", s }' "/proc/$1/io"; }

secs() { printf '%d.%03d' $(($1 / 1000000000)) $(($1 / 1000000 % 1000)); }
