#!/bin/bash
# Checks that the kernel fatbin holds every kernel of cuda/expected_kernels.txt as an sm_80 cubin,
# an sm_90a cubin and compute_90 PTX (what the H100/H200 load, and the JIT fallback).
# Usage: fatbin_contents_test.sh <cuobjdump> <fatbin> <expected_kernels.txt>
set -euo pipefail
cuobjdump="$1" fatbin="$2" expected="$3"

elf_list="$("$cuobjdump" --list-elf "$fatbin")"
ptx_list="$("$cuobjdump" --list-ptx "$fatbin")"
for arch in sm_80 sm_90a; do
    grep -q "\.${arch}\.cubin" <<<"$elf_list" || { echo "FAIL: no ${arch} cubin in $fatbin:"; echo "$elf_list"; exit 1; }
done
grep -q "\.sm_90\.ptx" <<<"$ptx_list" || { echo "FAIL: no compute_90 PTX in $fatbin:"; echo "$ptx_list"; exit 1; }

# Kernel entry symbols per cubin architecture ("arch = sm_80" headers, then STO_ENTRY symbols),
# and PTX entries (".visible .entry name(").
symbols="$("$cuobjdump" --dump-elf-symbols "$fatbin" | awk '
    /^arch = / { arch = $3 }
    /STO_ENTRY/ { print arch, $NF }')"
ptx_entries="$("$cuobjdump" --dump-ptx "$fatbin" | sed -n 's/^\.visible \.entry \([A-Za-z0-9_]*\)(.*/\1/p')"

missing=0
count=0
while read -r kernel; do
    kernel="${kernel%%#*}"
    kernel="$(tr -d '[:space:]' <<<"$kernel")"
    [[ -z "$kernel" ]] && continue
    count=$((count + 1))
    for arch in sm_80 sm_90a; do
        if ! grep -qx "$arch $kernel" <<<"$symbols"; then
            echo "FAIL: kernel $kernel missing from the $arch cubin"
            missing=$((missing + 1))
        fi
    done
    if ! grep -qx "$kernel" <<<"$ptx_entries"; then
        echo "FAIL: kernel $kernel missing from the compute_90 PTX"
        missing=$((missing + 1))
    fi
done <"$expected"

if [[ $count -eq 0 ]]; then
    echo "FAIL: $expected lists no kernels"
    exit 1
fi
if [[ $missing -ne 0 ]]; then
    exit 1
fi
echo "ok: $count kernels present for sm_80, sm_90a and compute_90 PTX"
