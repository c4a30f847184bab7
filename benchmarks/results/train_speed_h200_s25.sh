#!/bin/bash
# Ran 2026-11-27 on one H200 (one call, 531 s) with the code of commit 166ae17 (stop 24 + checkpoint_save.py on the GPU).
# The graphs row's JSON did not come back (a limit on the number of files); its printed line is in train_speed_h200_s25_output.txt.
# Then, on the same warm machine: the Lightning loop with compile=reduce-overhead (300 steps, train_speed_h200_s25_lightning_graphs.json)
# and twice the eager bare row with the Lightning loop without the profiler (train_speed_h200_s25_eager_rep{1,2}.json):
#   python benchmarks/train_speed.py --rows none --profile none --lightning-steps 300 --lightning-args compile=reduce-overhead --data-dir /tmp/ms
#   python benchmarks/train_speed.py --rows 256x128:bf16:eager:fused --profile none --lightning-steps 250 --lightning-no-profiler --data-dir /tmp/ms
cd "$(dirname "$0")/.."
T0=$(date +%s)
left() { local l=$(( ${BUDGET:-540} - ($(date +%s) - T0) )); local c=$1; echo $(( l < c ? l : c )); }
pip install --quiet --no-deps --target .device/tgt .device/wheels/*.whl > /dev/null 2>&1
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONWARNINGS=ignore
export PYTHONPATH=$PWD/src:$PWD/.device/pure:$PWD/.device/tgt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc; python -c "import torch, lightning; print(torch.__version__, lightning.__version__)"
F="grep -v ^USDT\|^ERROR:\|Warning\|warn"
TS="python benchmarks/train_speed.py"
echo "== eager $(( $(date +%s) - T0 ))s"
timeout $(left 150) $TS --rows 256x128:bf16:eager:fused --profile 256x128:bf16:eager:fused --fed-steps 60 --lightning-steps 250 --data-dir /tmp/ms --log-dir /tmp/l_e --json $OUT/eager.json > $OUT/eager.log 2>&1; $F $OUT/eager.log | tail -8
echo "== eager, no profiler $(( $(date +%s) - T0 ))s"
timeout $(left 70) $TS --rows none --profile none --lightning-steps 250 --lightning-no-profiler --data-dir /tmp/ms --log-dir /tmp/l_np --json $OUT/eager_noprof.json > $OUT/eager_noprof.log 2>&1; $F $OUT/eager_noprof.log | tail -2
echo "== checkpoint $(( $(date +%s) - T0 ))s"
timeout $(left 70) python benchmarks/checkpoint_save.py --train-epochs 0 --json $OUT/checkpoint_save.json > $OUT/checkpoint_save.log 2>&1; $F $OUT/checkpoint_save.log | tail -6
echo "== compile $(( $(date +%s) - T0 ))s"
timeout $(left 210) $TS --rows none --profile none --fed-steps 60 --fed-mode compile --lightning-steps 250 --lightning-args compile=true --data-dir /tmp/ms --log-dir /tmp/l_c --json $OUT/compile.json > $OUT/compile.log 2>&1; $F $OUT/compile.log | tail -4
echo "== graphs $(( $(date +%s) - T0 ))s"
timeout $(left 300) $TS --rows 256x128:bf16:graphs:fused --profile none --json $OUT/graphs.json > $OUT/graphs.log 2>&1; $F $OUT/graphs.log | tail -4
echo "== end $(( $(date +%s) - T0 ))s"
