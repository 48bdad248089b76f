#!/usr/bin/env bash
# The GPU figures in one call of the device tool, on its GPU image as it is: python3 is Python 3.12 with torch 2.11
# (cu130), transformers 5.17, peft and accelerate; no trl, kfp or pydantic, and nothing can be fetched there. What the
# steps need beyond the image travels as wheels in .whl/ (benchmarks/gpu_bundle.sh, run here first). The steps, each
# with its own time limit (5 minutes in all, so that two tries and their machine starts fit in 15 minutes):
#   bundle       installs .whl/ with --target into the work folder, which goes first on PYTHONPATH
#   preflight    prints the versions it runs with and the GPU, and imports everything the steps import: a missing
#                package stops the run here, named (benchmarks/gpu_imports.py)
#   model        a random-init model of SmolLM2-135M-Instruct's shape from the committed config and tokenizer
#                (benchmarks/models/; the bundled model's 93 MB wheel cannot travel): the steps below run on it
#   tune_360m    real tokens/s of calltune's tuner (sdpa) against TRL packed + Liger and the HF baseline (flatten),
#                MFU and peak memory (benchmarks/tune_throughput.py); then calltune with flex_attention
#   tune_1.5b    the same at 1.5b, without flex_attention
#   batch_infer  replies/s: calltune's batched generation against one generate call per prompt
#   pipeline     `calltune run` (kfp.local, the bundled calls, translate.backend=none) on the random-init model: the
#                GPU path end to end (bf16, Liger); its figures are times, its accuracy is noise
# The figures go to OUT/summary.txt and each step's log to OUT/<step>.log (7 logs: the device brings back 8 files);
# the install, run and state folders go to a work folder outside OUT. The README's "On a GPU" reads the figures.
#
#   benchmarks/gpu_check.sh [OUT]             # on the GPU machine: the device tool's run, carry [".whl"]; OUT: $OUT
#   benchmarks/gpu_check.sh --rehearse [OUT]  # here, on CPU: builds the bundle, checks the imports against the
#                                             # image and runs every step on tiny shapes in a venv like the image
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=gpu
if [[ ${1:-} == --rehearse ]]; then MODE=rehearse; shift; fi
if [[ $MODE == rehearse ]]; then
  HOLD=$ROOT/.gpu_rehearse  # ignored by git: the venv, the work folder, the output
  OUT=${1:-$HOLD/out} WORK=$HOLD/work
  mkdir -p "$HOLD" && exec 9> "$HOLD/lock"
  flock -n 9 || { echo "another rehearsal is running in this checkout" >&2; exit 1; }
else
  OUT=${1:-${OUT:-gpu_check_out}} WORK=${TMPDIR:-/tmp}/calltune-gpu-check
fi
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT" && OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/*.log
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
FIGURES='"device"|^\{"size"|^ +(calltune|trl|baseline)_|^[0-9a-z.]+: real tokens|^one generate call|^batched \('
FIGURES+='|^ratio|^model:|, device (cpu|cuda)|^versions:|^MISSING|^preflight:|: done|token accuracy|^gate:'
FAILED=() SPENT=0 LIMITS=0

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, its figures to the summary
  local name=$1 limit=$2 start rc command
  shift 2
  command=${*#"$ROOT"/}
  echo "== $name (limit ${limit}s): ${command:0:300}$( ((${#command} > 300)) && echo ' ...')" | tee -a "$SUMMARY"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  SPENT=$((SPENT + $(date +%s) - start)) LIMITS=$((LIMITS + limit))
  echo "   exit $rc after $(( $(date +%s) - start ))s$([[ $rc == 124 ]] && echo ' (TIME LIMIT)')" | tee -a "$SUMMARY"
  grep -E "$FIGURES" "$OUT/$name.log" | tee -a "$SUMMARY"
  [[ $rc == 0 ]] || { tail -n 5 "$OUT/$name.log" | grep -vE "$FIGURES" | sed 's/^/   | /' | tee -a "$SUMMARY"
                      FAILED+=("$name"); }
  return "$rc"
}
finish() {
  echo "steps: ${SPENT}s of their ${LIMITS}s of limits; $([[ ${#FAILED[@]} == 0 ]] && echo "all passed" ||
        echo "FAILED: ${FAILED[*]}")" | tee -a "$SUMMARY"
  echo "summary: $SUMMARY"
  [[ ${#FAILED[@]} == 0 ]]
  exit
}
stop() { echo "stopped: the steps after $1 need it" | tee -a "$SUMMARY"; finish; }

if [[ $MODE == rehearse ]]; then
  # Here, with the registries in reach: the bundle, the import check, and a venv that holds only image packages.
  py312() {  # a Python 3.12, as the image's: $REHEARSE_PYTHON, python3.12, or pyenv's newest 3.12
    local p
    for p in ${REHEARSE_PYTHON:-} python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
      [[ -n $p ]] && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$p"; return; }
    done
    return 1
  }
  echo "== rehearsal $(date -u +%FT%TZ): the image's packages, the bundle, every step on tiny shapes on CPU" |
    tee -a "$SUMMARY"
  benchmarks/gpu_bundle.sh 2>&1 | grep -v "^WARNING: Location" | tee -a "$SUMMARY"
  [[ ${PIPESTATUS[0]} == 0 ]] || { FAILED+=(gpu_bundle); stop gpu_bundle; }
  HOST=$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)  # holds calltune's dependencies
  "$HOST" benchmarks/gpu_imports.py --wheels .whl --venv-requirements "$HOLD/image-requirements.txt" |
    tee -a "$SUMMARY"
  [[ ${PIPESTATUS[0]} == 0 ]] || { FAILED+=(import_check); stop "the import check"; }
  VENV=$HOLD/venv
  if ! cmp -s "$HOLD/image-requirements.txt" "$VENV/requirements.txt"; then  # installed into when the list changes
    if [[ ! -x $VENV/bin/python ]]; then
      PY312=$(py312) || { echo "no Python 3.12 here (set REHEARSE_PYTHON)" | tee -a "$SUMMARY"; exit 1; }
      "$PY312" -m venv "$VENV"
    fi
    { "$VENV/bin/python" -m pip install -q -r "$HOLD/image-requirements.txt" 2>&1 | grep -v "^WARNING: Location"
      [[ ${PIPESTATUS[0]} == 0 ]]; } && "$VENV/bin/python" benchmarks/gpu_imports.py --image-only --remove-others &&
      cp "$HOLD/image-requirements.txt" "$VENV/requirements.txt" ||
      { echo "the rehearsal's venv could not be made" | tee -a "$SUMMARY"; exit 1; }
  fi
  "$VENV/bin/python" benchmarks/gpu_imports.py --image-only | tee -a "$SUMMARY"
  [[ ${PIPESTATUS[0]} == 0 ]] || { FAILED+=(venv); stop "a venv of image packages"; }
  echo "venv: $("$VENV/bin/python" -c 'import sys; print("Python", sys.version.split()[0])'), $(
    "$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -ciE '^[a-z0-9]') image packages:" \
    "$(tr '\n' ' ' < "$VENV/requirements.txt")" | tee -a "$SUMMARY"
  PY=$VENV/bin/python
else
  PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
  [[ $PY == /* || $PY != */* ]] || PY=$ROOT/$PY  # the pipeline step runs from the work folder
fi

# As on the GPU machine: nothing to fetch, nothing from this user's caches.
export PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HOME=$WORK/hf MPLCONFIGDIR=$WORK/mpl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
  step bundle "$([[ $MODE == gpu ]] && echo 20 || echo 300)" "$PY" -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl || stop bundle
  export PYTHONPATH=$WORK/site
else
  echo "no .whl/: the steps run on $PY's own packages (benchmarks/gpu_bundle.sh makes the bundle)" | tee -a "$SUMMARY"
fi
# `calltune run` imports calltune.components and calltune.pipelines, which pyproject.toml's package-dir maps from
# components/ and pipelines/; nothing installs calltune there, so the package is laid out here as an install would.
mkdir -p "$WORK/src" && cp -r calltune "$WORK/src/" && cp -r components "$WORK/src/calltune/components" &&
  cp -r pipelines "$WORK/src/calltune/pipelines"
PIPELINE=(env -C "$WORK" PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m calltune.cli run
          --config "$ROOT/configs/local.yaml" --out "$WORK/run" "state_dir=$WORK/state" "tune.base_model=$WORK/model"
          translate.backend=none evaluate.embedding_model= "tune.compile='off'" tune.max_steps=20 tune.batch_size=32
          tune.max_seq_len=384 sample.train_size=512 sample.test_size=64 simulate.max_calls=4 infer.batch_size=64
          evaluate.batch_size=32)  # compile off (quoted: YAML reads a bare off as false): the tune steps measure it
BATCH_INFER=("$PY" benchmarks/generate_throughput.py --base-model "$WORK/model" --examples 128 --batch-size 64
             --max-new-tokens 32)

if [[ $MODE == gpu ]]; then
  step preflight 25 "$PY" benchmarks/gpu_imports.py --preflight --cuda || stop preflight
  step model 15 "$PY" benchmarks/random_model.py --out "$WORK/model" || stop model
  step tune_360m 90 "$PY" benchmarks/tune_throughput.py --sizes 360m --steps 20 \
    --variants calltune_sdpa,trl_packed_liger,baseline_flatten,calltune_flex_attention
  step tune_1.5b 80 "$PY" benchmarks/tune_throughput.py --sizes 1.5b --steps 15 \
    --variants calltune_sdpa,trl_packed_liger,baseline_flatten
  step batch_infer 30 "${BATCH_INFER[@]}"
  step pipeline 40 "${PIPELINE[@]}"
else  # the same steps on tiny shapes: the GPU's arguments (a typo fails here), then tiny ones that override them;
      # CUDA's own variants (flex_attention, Liger's kernels) have no CPU path
  step preflight 120 "$PY" benchmarks/gpu_imports.py --preflight || stop preflight
  step model 120 "$PY" benchmarks/random_model.py --out "$WORK/model" --tiny || stop model
  step tune_tiny 600 "$PY" benchmarks/tune_throughput.py --sizes tiny --steps 3 \
    --variants calltune_sdpa,trl_packed,baseline_flatten
  step batch_infer 300 "${BATCH_INFER[@]}" --examples 8 --batch-size 4 --max-new-tokens 8
  step pipeline 1200 "${PIPELINE[@]}" tune.max_steps=2 sample.train_size=16 sample.validation_size=0 \
    sample.test_size=8 simulate.max_calls=2 evaluate.samples=2 evaluate.bootstrap_samples=10 infer.max_new_tokens=8
fi
finish
