#!/bin/bash
# Runs the device FSDP test on the lent GPU (libs found as tools/gpu_check.sh finds them).
set -u
libdir() {
    local pat="$1" lib
    lib="$(ldconfig -p 2>/dev/null | awk -v p="$pat" '$0 ~ p {print $NF; exit}')"
    [[ -n "$lib" ]] && { dirname "$lib"; return; }
    for lib in /usr/local/cuda/lib64/$pat* /usr/local/cuda-*/lib64/$pat* \
        $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | tr ' ' '\n' \
            | sed "s|\$|/nvidia/*/lib/$pat*|"); do
        [[ -e "$lib" ]] && { dirname "$lib"; return; }
    done
}
c="$(libdir libcublasLt.so)"; n="$(libdir libnccl.so)"
echo "cublasLt: ${c:-NOT FOUND}; nccl: ${n:-NOT FOUND}"
export LD_LIBRARY_PATH="${c}:${n}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi -L
start=$(date +%s)
timeout "${1:-420}" target/devfsdp-carry/device_fsdp --nocapture --test-threads=1 > "${OUT:-/tmp}/device_fsdp.log" 2>&1
rc=$?
echo "rc=$rc after $(( $(date +%s) - start )) s"
cat "${OUT:-/tmp}/device_fsdp.log"
exit $rc
