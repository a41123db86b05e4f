#!/bin/bash
C=target/attn-carry
S="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "== gpu tests"
timeout 60 $C/gpu-tests --test-threads=4 --skip cuda_ops_loss_curve 2>&1 | grep -E "test result|panicked|FAILED" | head -20
echo "== timing: embedded fatbin (full check), then variants"
PYTHONUNBUFFERED=1 timeout 60 python3 $C/attn_bench.py $C/kormo.fatbin 2>&1 | tail -8
PYTHONUNBUFFERED=1 ATTN_MODE=quick timeout 60 python3 $C/attn_bench.py $C/exp/BASE.fatbin $C/exp/NEW_G4.fatbin $C/exp/NEW_G8.fatbin $C/exp/NEW_G16.fatbin 2>&1 | tail -14
echo "== racecheck (all gpu tests but the loss curve)"
timeout 80 $S --tool racecheck --error-exitcode 99 $C/gpu-tests --test-threads=1 --skip cuda_ops_loss_curve > $OUT/racecheck.log 2>&1; echo "rc=$?"
grep -E "RACECHECK SUMMARY|test result|Race reported" $OUT/racecheck.log | sort | uniq -c | head
echo "== memcheck (attention)"
timeout 30 $S --tool memcheck --error-exitcode 99 $C/gpu-tests attention --test-threads=1 > $OUT/memcheck.log 2>&1; echo "rc=$?"
grep -E "ERROR SUMMARY|test result" $OUT/memcheck.log | head
