#!/usr/bin/env bash
# machine-info.sh - sourced by the benchmark scripts for the reports in
# docs/performance.md: `machine_info DIR` prints markdown lines describing this
# machine and the disk holding DIR; `source_commit REPO` names the code measured.
machine_info() {
    local dir=$1 cpu mem os virt disk
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)
    virt=$(systemd-detect-virt 2>/dev/null || true)
    disk=$(df -PT "$dir" | awk 'NR == 2 { print $2 " on " $1 }')
    echo "- machine: $(nproc) CPUs (${cpu:-?}), $mem RAM${virt:+, virtualization: $virt}"
    echo "- OS: ${os:-?}, kernel $(uname -r)"
    echo "- disk: $disk (\`$dir\`, $(findmnt -no OPTIONS -T "$dir" 2>/dev/null | cut -c1-60))"
}

# `source_commit REPO` prints the checkout's commit for a report: 12 hex digits,
# "(dirty)" when tracked files differ, or why there is none.
source_commit() {
    local repo=$1 commit
    if ! git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
        echo "unknown (not a git checkout)"
    elif ! commit=$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null); then
        echo "none yet (uncommitted tree)"
    elif [[ -n $(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        echo "$commit (dirty)"
    else
        echo "$commit"
    fi
}
