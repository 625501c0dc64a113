#!/usr/bin/env bash
# The one prepared check for the day a GPU appears: run it first, on the GPU machine, from the repository root.
#
#   bash tools/gpu_check.sh                    # on the GPU machine: ~12 min of a 15-min budget (one GPU)
#   bash tools/gpu_check.sh --dry-run          # on a CPU: the same parts at tiny size (what CI runs, ~1-2 min)
#   bash tools/gpu_check.sh --out DIR --nproc N
#
# Parts, each under its own time limit (expected time on one H100/H200 in brackets):
#   1. suite  [~2 min, limit 180 s]: the tests that exercise CUDA (GPU-only tests skip on CPU) and the fake-CUDA
#      dry run, now with a real device present.
#   2. run    [~5 min, limit 360 s]: torchrun EAT-base pretraining on 400 synthetic 10 s clips with train.compile=true and
#      the fbank on the GPU; SIGTERM to the whole process group after step 20; the same command again resumes and
#      finishes at step 60.
#   3. bench  [~5 min, limit 330 s]: tools/bench_pretrain.py (compiled, flash attention, GPU fbank, host syncs per
#      step), tools/bench_finetune.py and tools/predict_gpu.py (the prediction to compare with), each to JSON.
# Everything ends up in DIR/gpu_check.json (each part's status and seconds, and every benchmark's JSON) and
# DIR/*.log. The exit status is non-zero when any part failed; the other parts still run.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=outputs/gpu_check
NPROC=1
PY=${PYTHON:-python}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --nproc) NPROC=$2; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
TORCHRUN=$(dirname "$(command -v "$PY")")/torchrun
mkdir -p "$OUT"
: > "$OUT/parts.jsonl"
FAILED=0

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; PRESET=tiny; CONFIG=recipes/configs/tiny.yaml; CLIPS=16; DURATION=3; STEPS=12; CUT=2; COMPILE=false
  SUITE_ARGS=(--collect-only -q)  # the selection must exist; the dry run tests themselves run in CI anyway
  BENCH_PRE=(--preset tiny --device cpu --batch 2 --steps 2 --warmup 1 --split-steps 1 --fbank-on-device)
  BENCH_FT=(--preset tiny --device cpu --batch 2 --steps 1 --warmup 1)
  PREDICT=(--preset tiny --batch 1); PREDICT_SPEED=(--no-calibrate)
  LIMIT_SUITE=180; LIMIT_RUN=300; LIMIT_BENCH=300; WORKERS=1
else
  DEVICE=cuda; PRESET=base; CONFIG=recipes/configs/pretrain_as2m.yaml; CLIPS=400; DURATION=10; STEPS=60; CUT=20
  COMPILE=true
  SUITE_ARGS=(-q -m "not slow")
  BENCH_PRE=(--preset base --batch 12 --clones 16 --compile --sdpa-backend flash --fbank-on-device --steps 20)
  BENCH_FT=(--preset eat_base --batch 48 --steps 10 --warmup 3)  # eager: compiling three models would not fit
  PREDICT=(--preset base --batch 12); PREDICT_SPEED=()
  LIMIT_SUITE=180; LIMIT_RUN=360; LIMIT_BENCH=330; WORKERS=6
fi

part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, record status and seconds
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && FAILED=1 && tail -20 "$OUT/$name.log"
  echo "{\"part\": \"$name\", \"status\": $rc, \"seconds\": $((SECONDS - start))}" >> "$OUT/parts.jsonl"
  echo "   status $rc after $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------------------------- 1. suite
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/device.log"
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible (use --dry-run on a CPU machine)" >&2; exit 2
fi
part suite "$LIMIT_SUITE" "$PY" -m pytest "${SUITE_ARGS[@]}" tests/test_cuda_dryrun.py tests/test_eat_model.py \
  tests/test_masking.py tests/test_augment.py tests/test_bench.py tests/test_trainer.py tests/test_fbank.py

# ---------------------------------------------------------------------------------------------- 2. run
run_pretrain() {  # SIGTERM to the process group at step CUT, then the same command resumes to STEPS
  local data=$OUT/data run=$OUT/run
  rm -rf "$run"
  [ -f "$data/unlabelled/train.tsv" ] || "$PY" tools/make_synthetic_data.py "$data" --what unlabelled \
    --num-clips "$CLIPS" --duration "$DURATION" || return 1
  local cmd=("$TORCHRUN" --standalone --nproc_per_node="$NPROC" recipes/pretrain_as2m.py --config "$CONFIG"
             data.train_manifest="$data/unlabelled/train.tsv" data.fbank_on_device=true train.compile=$COMPILE
             train.device=$DEVICE train.out_dir="$run" train.max_steps=$STEPS train.log_every=1 train.save_every=0
             train.tensorboard=false data.num_workers=$WORKERS model.encoder.target_length=$([ "$PRESET" = tiny ] && echo 256 || echo 1024))
  setsid "${cmd[@]}" > "$OUT/run_first.log" 2>&1 & local pid=$!
  until grep -q "\"step\": $CUT[,}]" "$run/metrics.jsonl" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { echo "the run ended before step $CUT"; cat "$OUT/run_first.log"; return 1; }
    sleep 0.5
  done
  kill -TERM -- -$pid  # the launcher, every rank and every loader worker, as a cluster's preemption does
  wait $pid; echo "first launch exited with $? after SIGTERM (ranks exit 75; torchrun reports the signal)"
  grep -q "preemption signal" "$OUT/run_first.log" || { echo "no preemption checkpoint"; return 1; }
  ls -d "$run"/step_* || { echo "no checkpoint after SIGTERM"; return 1; }
  "${cmd[@]}" > "$OUT/run_second.log" 2>&1 || { tail -30 "$OUT/run_second.log"; return 1; }
  grep "resumed from" "$OUT/run_second.log" || { echo "the second launch did not resume"; return 1; }
  grep -q "\"step\": $STEPS[,}]" "$run/metrics.jsonl" || { echo "did not reach step $STEPS"; return 1; }
}
part run "$LIMIT_RUN" bash -c "$(declare -f run_pretrain); OUT='$OUT' PY='$PY' TORCHRUN='$TORCHRUN' NPROC=$NPROC \
  CONFIG='$CONFIG' COMPILE=$COMPILE DEVICE=$DEVICE STEPS=$STEPS CUT=$CUT CLIPS=$CLIPS DURATION=$DURATION \
  PRESET=$PRESET WORKERS=$WORKERS; run_pretrain"

# ---------------------------------------------------------------------------------------------- 3. bench
part bench "$LIMIT_BENCH" bash -c "set -e
  '$PY' tools/bench_pretrain.py ${BENCH_PRE[*]} --json '$OUT/bench_pretrain.json'
  '$PY' tools/bench_finetune.py ${BENCH_FT[*]} --json '$OUT/bench_finetune.json'
  '$PY' tools/predict_gpu.py memory ${PREDICT[*]} --json '$OUT/predict_memory.json'
  '$PY' tools/predict_gpu.py speed ${PREDICT[*]} ${PREDICT_SPEED[*]} --json '$OUT/predict_speed.json'"

# ---------------------------------------------------------------------------------------------- one JSON
"$PY" - "$OUT" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
result = {"dry_run": dry, "device": (out / "device.log").read_text().strip(),
          "parts": [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines() if line.strip()]}
for name in ("bench_pretrain", "bench_finetune", "predict_memory", "predict_speed"):
    path = out / f"{name}.json"
    result[name] = json.loads(path.read_text()) if path.is_file() else None
(out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
print("wrote", out / "gpu_check.json", "| parts:", ", ".join(f"{p['part']} {p['status']} ({p['seconds']} s)"
                                                             for p in result["parts"]))
EOF
exit $FAILED
