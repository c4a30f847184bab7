#!/bin/bash
# Ran 2026-11-27 on one H200 (first call of the session, 393 s) with the code of the commit that
# adds magnifier.syncs.CudaSyncWatch; its compile rows and compile=true failed on Dynamo's CUDA
# LSTM (train_speed_h200_c1_lightning_compile_failed.json), fixed before the second call.
# Issue 12 (stops 20-22 + this one): the first GPU figures of the code since the last H200 run.
# carry [".device"]; one call, timeout 590. Steps in order of value, each capped by what is left.
cd "$(dirname "$0")/.."
T0=$(date +%s)
left() { local l=$(( 570 - ($(date +%s) - T0) )); local c=$1; echo $(( l < c ? l : c )); }
pip install --quiet --no-deps --target .device/tgt .device/wheels/*.whl > /dev/null 2>&1
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONWARNINGS=ignore
P=$PWD/.device/pure:$PWD/.device/tgt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
F="grep -v ^USDT\|^ERROR:\|Warning\|warn"
TS="python benchmarks/train_speed.py"
# 1. previous GPU run's code (f58b940): Lightning loop and the bare eager row, same machine (generates /tmp/ms)
echo "== prev $(( $(date +%s) - T0 ))s"
(cd .device/prev && PYTHONPATH=$PWD/src:$P MAGNIFIER_CONFIG_DIR=$PWD/conf timeout $(left 100) python benchmarks/train_speed.py --rows 256x128:bf16:eager:fused --profile none --lightning-steps 250 --data-dir /tmp/ms --log-dir /tmp/l_prev --json $OUT/prev.json 2>&1 | $F | tail -4)
export PYTHONPATH=$PWD/src:$P
# 2. now: Lightning eager (goal 1), bare eager rows, profile (goal 3), sync check
echo "== now eager $(( $(date +%s) - T0 ))s"
timeout $(left 130) $TS --rows 256x128:bf16:eager:fused 256x128:bf16:eager:foreach 384x192:bf16:eager:fused 384x192:fp32:eager:fused --profile 256x128:bf16:eager:fused --sync-check --lightning-steps 250 --data-dir /tmp/ms --log-dir /tmp/l_e --json $OUT/eager.json 2>&1 | $F | tail -14
# 3. the Lightning loop's own host round trips and CUDA syncs (debug=syncs)
echo "== syncs $(( $(date +%s) - T0 ))s"
timeout $(left 70) $TS --rows none --profile none --lightning-steps 60 --data-dir /tmp/ms --log-dir /tmp/l_s --lightning-args debug=syncs callbacks.sync_audit.steps=55 --json $OUT/lightning_syncs.json 2>&1 | $F | tail -2
python -c "import json;print('\n'.join(json.load(open('$OUT/lightning_syncs.json'))['lightning'].get('host_round_trips',[])[:14]))" 2>&1 | tail -14
# 4. compiled and CUDA-graph bare rows, each profiled with its own models (goal 2)
echo "== compiled $(( $(date +%s) - T0 ))s"
timeout $(left 220) $TS --rows 256x128:bf16:compile:fused 256x128:bf16:graphs:fused --profile 256x128:bf16:compile:fused 256x128:bf16:graphs:fused --json $OUT/compiled.json 2>&1 | $F | tail -8
# 5. the Lightning loop with compile=true (goal 1 compiled)
echo "== lightning compile $(( $(date +%s) - T0 ))s"
timeout $(left 200) $TS --rows none --profile none --lightning-steps 250 --data-dir /tmp/ms --log-dir /tmp/l_c --lightning-args compile=true --json $OUT/lightning_compile.json 2>&1 | $F | tail -2
echo "== end $(( $(date +%s) - T0 ))s"
