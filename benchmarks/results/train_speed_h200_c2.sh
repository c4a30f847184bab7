#!/bin/bash
# Ran 2026-11-27 on one H200 (second call, another machine start, 375 s) with the SFB's LSTM
# written out for torch.compile; the graphs row ran out of the call's time before printing.
# Issue 12, second call: compile with the SFB's LSTM written out (the first call's compile rows
# failed on Dynamo's CUDA LSTM), the Lightning loop with its own progress bar. carry [".device"].
cd "$(dirname "$0")/.."
T0=$(date +%s)
left() { local l=$(( ${BUDGET:-400} - ($(date +%s) - T0) )); local c=$1; echo $(( l < c ? l : c )); }
pip install --quiet --no-deps --target .device/tgt .device/wheels/*.whl > /dev/null 2>&1
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONWARNINGS=ignore
export PYTHONPATH=$PWD/src:$PWD/.device/pure:$PWD/.device/tgt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
F="grep -v ^USDT\|^ERROR:\|Warning\|warn"
TS="python benchmarks/train_speed.py"
echo "== eager $(( $(date +%s) - T0 ))s"
timeout $(left 95) $TS --rows 256x128:bf16:eager:fused --profile none --lightning-steps 250 --data-dir /tmp/ms --log-dir /tmp/l_e --json $OUT/eager2.json 2>&1 | $F | tail -4
echo "== compile $(( $(date +%s) - T0 ))s"
timeout $(left 150) $TS --rows 256x128:bf16:compile:fused --profile 256x128:bf16:compile:fused --json $OUT/compile.json 2>&1 | $F | tail -5
echo "== lightning compile $(( $(date +%s) - T0 ))s"
timeout $(left 130) $TS --rows none --profile none --lightning-steps 200 --data-dir /tmp/ms --log-dir /tmp/l_c --lightning-args compile=true --json $OUT/lightning_compile.json 2>&1 | $F | tail -3
echo "== graphs $(( $(date +%s) - T0 ))s"
timeout $(left 200) $TS --rows 256x128:bf16:graphs:fused --profile 256x128:bf16:graphs:fused --json $OUT/graphs.json 2>&1 | $F | tail -5
echo "== end $(( $(date +%s) - T0 ))s"
