#!/bin/bash
# Issue 12, before (.device/before: the code at the end of issue 11) and after, one machine.
cd "$(dirname "$0")/.."
pip install --quiet --no-deps --target .device/tgt .device/wheels/*.whl > /dev/null 2>&1
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONWARNINGS=ignore
P=$PWD/.device/pure:$PWD/.device/tgt
ROWS="256x128:bf16:eager:foreach 256x128:bf16:eager:fused 384x192:fp32:eager:foreach"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=$PWD/.device/before/src:$P MAGNIFIER_CONFIG_DIR=$PWD/.device/before/conf timeout 175 python benchmarks/train_speed.py --rows $ROWS --profile 256x128:bf16:eager:fused --sync-check --lightning-steps 250 --data-dir /tmp/ms --log-dir /tmp/lb --json $OUT/before.json 2>&1 | grep -v "^USDT\|^ERROR:\|Warning\|warn" | tail -9
PYTHONPATH=$PWD/src:$P timeout 150 python benchmarks/train_speed.py --rows $ROWS --profile 256x128:bf16:eager:fused --sync-check --lightning-steps 250 --data-dir /tmp/ms --log-dir /tmp/la --json $OUT/after.json 2>&1 | grep -v "^USDT\|^ERROR:\|Warning\|warn" | tail -9
