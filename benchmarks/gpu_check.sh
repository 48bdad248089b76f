#!/usr/bin/env bash
# The GPU figures of issue 16, in one script that fits 9 minutes on one H100/H200 (each step has its own limit):
#   1. tune benchmark at 360m: calltune (sdpa, flex_attention) against the TRL anchor (packed + Liger) and the HF
#      baseline (flatten), with MFU and peak memory; flex_attention against sdpa is this step's calltune pair
#   2. the same at 1.5b (calltune sdpa, TRL packed + Liger, HF flatten)
#   3. a short real pipeline run (calltune run: kfp.local, the bundled calls) with tune.compile=on; Liger is on
#      whenever liger-kernel is installed and CUDA is up (the trainer image's `gpu` extra)
#   4. GPU batch inference: calltune.evaluation.batch_infer's batched generation against one generate call per prompt
#
#   benchmarks/gpu_check.sh [OUT]          # GPU: figures in OUT/*.log and OUT/summary.txt (default gpu_check_out)
#   benchmarks/gpu_check.sh --cpu [OUT]    # CPU: every step on tiny shapes, to check the script runs; no figures
#
# Needs a CUDA build of torch in $PYTHON (default .venv/bin/python) and ../shared/bench (the TRL anchor and the HF
# baseline). Nothing is downloaded: the models are random-init shapes and the bundled SmolLM2.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODE=gpu
if [[ ${1:-} == --cpu ]]; then MODE=cpu; shift; fi
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for bench in "${CALLTUNE_BENCH:-}" ../shared/bench shared/bench /work/shared/bench; do  # the TRL anchor, HF baseline
  if [[ -n $bench && -f $bench/trl_sft_anchor.py ]]; then export CALLTUNE_BENCH=$(cd "$bench" && pwd); break; fi
done

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, keep going on failure
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "   exit $rc after $(( $(date +%s) - start ))s$([[ $rc == 124 ]] && echo ' (TIME LIMIT)')" | tee -a "$SUMMARY"
  grep -E '^\{"size"|^ +(calltune|trl|baseline)_|^[0-9a-z.]+: real tokens|replies/s|ratio|accuracy|promoted|"device"' \
    "$OUT/$name.log" | tee -a "$SUMMARY"
  [[ $rc == 0 ]] || tail -n 5 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
}

if [[ $MODE == gpu ]]; then
  step preflight 30 "$PY" -c "
import importlib.util, torch
assert torch.cuda.is_available(), 'no CUDA: run with --cpu, or point PYTHON at a CUDA torch'
print({'device': torch.cuda.get_device_name(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
       'liger_kernel': importlib.util.find_spec('liger_kernel') is not None,
       'memory_gb': round(torch.cuda.get_device_properties(0).total_memory / 2**30)})"
  step tune_360m 170 "$PY" benchmarks/tune_throughput.py --sizes 360m --steps 20 \
    --variants calltune_sdpa,calltune_flex_attention,trl_packed_liger,baseline_flatten
  step tune_1.5b 170 "$PY" benchmarks/tune_throughput.py --sizes 1.5b --steps 15 \
    --variants calltune_sdpa,trl_packed_liger,baseline_flatten
  step pipeline_compile_on 110 "$PY" -m calltune.cli run --out "$OUT/run" "state_dir=$OUT/state" \
    tune.compile=on tune.max_steps=40 tune.batch_size=32 tune.max_seq_len=384 sample.train_size=1000 \
    sample.test_size=200 infer.batch_size=64 evaluate.batch_size=32
  step batch_infer 50 "$PY" benchmarks/generate_throughput.py --examples 256 --batch-size 64 --max-new-tokens 64 \
    --state-dir "$OUT/state"
else
  step preflight 60 "$PY" -c "import torch; print({'device': 'cpu', 'torch': torch.__version__})"
  step tune_tiny 300 "$PY" benchmarks/tune_throughput.py --sizes tiny --steps 3 \
    --variants calltune_sdpa,trl_packed,baseline_flatten  # the GPU runs add flex_attention, packed_liger, 360m, 1.5b
  step pipeline 1500 "$PY" -m calltune.cli run --out "$OUT/run" "state_dir=$OUT/state" \
    translate.backend=none tune.max_steps=2 sample.train_size=16 sample.validation_size=0 sample.test_size=8 \
    evaluate.samples=2 evaluate.bootstrap_samples=10 evaluate.embedding_model= infer.max_new_tokens=8
  step batch_infer 600 "$PY" benchmarks/generate_throughput.py --examples 8 --batch-size 4 --max-new-tokens 8 \
    --state-dir "$OUT/state"
fi
echo "summary: $SUMMARY"
