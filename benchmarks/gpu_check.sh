#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one script (CI has none; run it on a GPU machine by hand):
#   1. real NVML sampling through `bigops gpu-monitor` (pynvml behind bigops.gpu.interface),
#   2. a watched bf16 training run of the tiny preset on the GPU (NCCL, 1 rank), with the GPU sampler running
#      beside it and the watchdog reading its samples,
#   3. trainer throughput vs transformers in bf16 (tokens/s, TFLOP/s, MFU) at tiny and bloom-560m size,
#   4. a short bloom-560m training run through `bigops launch` (the trainer's own TFLOP/s per GPU).
# Usage: OUT=/some/dir benchmarks/gpu_check.sh [SECTION...]   (all of 1 2 3 4 by default; PYTHON=python3;
# run from the repository root)
set -u
SECTIONS=" ${*:-1 2 3 4} "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }
OUT=${OUT:-/tmp/bigops-gpu-check}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
bigops() { "$PY" -m bigops.cli.main "$@"; }
section() { echo; echo "=== $* ($(date +%T))"; }

section environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
"$PY" -c 'import torch, deepspeed, pynvml; print("torch", torch.__version__, "deepspeed", deepspeed.__version__, "cuda", torch.cuda.is_available())'

if want 1; then
section "1. NVML through bigops gpu-monitor"
R1=$(mktemp -d)
bigops gpu-monitor "$R1" --once; echo "exit $?"
cat "$R1"/telemetry/gpu/*.jsonl | head -2 | tee "$OUT/nvml_sample.jsonl"

fi
if want 2; then
section "2. tiny preset, bf16 on the GPU, watched"
R2=$(mktemp -d)/tiny
mkdir -p "$R2"
"$PY" -m bigops.cli.main gpu-monitor "$R2" --interval 1 & MON=$!
timeout 240 "$PY" -m bigops.cli.main launch --run-dir "$R2" --tp 1 --pp 1 --steps 300 --save-interval 100 --watch
echo "launch exit $?"
kill $MON; wait $MON 2>/dev/null
tail -n 2 "$R2/telemetry/metrics.jsonl"
bigops status "$R2" --format json > "$OUT/tiny_status.json"; echo "status exit $?"
bigops watch "$R2" --once --dry-run; echo "watch exit $?"
cp "$R2/telemetry/metrics.jsonl" "$OUT/tiny_metrics.jsonl"

fi
if want 3; then
section "3. throughput vs transformers, bf16"
timeout 120 "$PY" -m benchmarks.model_throughput --dtype bf16 --hidden 1024 --layers 8 --heads 16 --seq 1024 --batch 8
timeout 200 "$PY" -m benchmarks.model_throughput --dtype bf16 --preset bloom-560m --batch 2 --rounds 3 --reps 2 --json \
  | tee "$OUT/throughput_560m.json"

fi
if want 4; then
section "4. bloom-560m through bigops launch, bf16, 1 GPU"
R4=$(mktemp -d)/b560
timeout 200 "$PY" -m bigops.cli.main launch --run-dir "$R4" --preset bloom-560m --tp 1 --pp 1 --steps 12 --save-interval 0 \
  --set train.global_batch_size=16 --set train.micro_batch_size=4 --set train.warmup_steps=2
echo "launch exit $?"
tail -n 3 "$R4/telemetry/metrics.jsonl" | tee "$OUT/b560_metrics_tail.jsonl"
tail -n 3 "$R4/telemetry/checkpoints.jsonl" 2>/dev/null
fi
section done
