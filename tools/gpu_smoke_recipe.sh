#!/bin/bash
# Prints a recipe for training checks on the GPU: configs/tiny.toml with head dim 64 (the
# attention kernels support head dims 64 and 128; tiny's is 32), named $1 (default gpu-smoke).
# Used by tools/gpu_check.sh (train-smoke) and tools/gpu_train_launch_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
sed -e "s/^name = \"tiny\"/name = \"${1:-gpu-smoke}\"/" \
    -e 's/^preset = "tiny"/preset = "tiny"\nheads = 2\nkv_heads = 1\nhead_dim = 64/' configs/tiny.toml
