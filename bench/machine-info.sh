#!/usr/bin/env bash
# machine-info.sh - sourced by the benchmark scripts: `machine_info DIR` prints the
# markdown lines that describe this machine and the disk holding DIR, for the
# reports in docs/performance.md.
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
