#!/bin/bash
# The GPU figures of the README's "Training speed on a GPU" and what the last session left open,
# in one call on one CUDA GPU: each step is capped by what is left of BUDGET seconds, so a
# machine lent for a fixed time brings back every figure measured before the time ran out.
#
#   BUDGET=540 OUT=/tmp/gpu DATA=/tmp/market_sized bash benchmarks/gpu_session.sh
#
# magnifier must be importable (pip install -e ., or PYTHONPATH=src). Every step writes
# OUT/<step>.log and OUT/<step>.json and prints its last lines; steps, in order of value:
#   eager      the eager bare row, profiled (GPU-busy), the bare loop fed by the training loader,
#              and the Lightning loop without the profiler (goals 1 to 3, eager)
#   compile    the compile=true row, profiled, its synchronising CUDA calls, and the fed loop
#              compiled and profiled: the gap between the compiled row and the compiled fed or
#              Lightning loop (two processes, one step, two profiles side by side)
#   graphs     the CUDA-graph row, profiled, and the Lightning loop with compile=reduce-overhead,
#              validating after each epoch and testing at the end (its evaluation under graphs)
#   checkpoint the background checkpoint write against the GPU training step
# BACKBONE and BATCH (resnet50, 64) make a smoke run possible on a small machine.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_session}
DATA=${DATA:-/tmp/market_sized}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { local l=$(( BUDGET - $(elapsed) )); echo $(( l < $1 ? l : $1 )); }
TS=(python benchmarks/train_speed.py --backbone "${BACKBONE:-resnet50}" --batch "${BATCH:-64}" --data-dir "$DATA")

step() {  # step NAME CAP_SECONDS COMMAND...: run it within what is left, print its last lines
    local name=$1 cap=$2
    shift 2
    local t
    t=$(left "$cap")
    echo "== $name at $(elapsed) s (up to $t s)"
    if [ "$t" -lt 20 ]; then
        echo "skipped: $t s left"
        return
    fi
    timeout "$t" "$@" > "$OUT/$name.log" 2>&1
    echo "exit $?"
    grep -v "^USDT\|Warning\|warn" "$OUT/$name.log" | tail -n 12
}

python -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
step eager 160 "${TS[@]}" --rows 256x128:bf16:eager:fused --profile 256x128:bf16:eager:fused \
    --fed-steps 60 --lightning-steps 250 --lightning-no-profiler --log-dir /tmp/gpu_session_eager \
    --json "$OUT/eager.json"
step compile 260 "${TS[@]}" --rows 256x128:bf16:compile:fused --profile 256x128:bf16:compile:fused \
    --sync-check 256x128:bf16:compile:fused --fed-steps 60 --fed-mode compile --fed-profile 5 \
    --json "$OUT/compile.json"
step graphs 300 "${TS[@]}" --rows 256x128:bf16:graphs:fused --profile 256x128:bf16:graphs:fused \
    --lightning-steps 300 --log-dir /tmp/gpu_session_graphs --lightning-args compile=reduce-overhead \
    trainer.check_val_every_n_epoch=1 test=true --json "$OUT/graphs.json"
step checkpoint 70 python benchmarks/checkpoint_save.py --backbone "${BACKBONE:-resnet50}" --train-epochs 0 \
    --json "$OUT/checkpoint_save.json"
echo "== end at $(elapsed) s"
