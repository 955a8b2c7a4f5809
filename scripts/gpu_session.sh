#!/usr/bin/env bash
# One GPU session, in one go (the device machine is lent for minutes): build the CUDA ops, run
# the GPU tests, train the six full course configs (all at once on the one GPU), then benchmark
# and evaluate. Every stage has a deadline and a log; a failure does not stop the rest.
#   OUT=/some/dir bash scripts/gpu_session.sh [TRAIN_DEADLINE_S] [END_DEADLINE_S]
# Leaves at most 7 files in $OUT: logs.tar.gz (logs + benchmark JSON, refreshed after every
# stage), run-<name>.tar for the four shipped D=64 models (fp16 weights, epoch-5 snapshot,
# losses, eval) and runs-small.tar (denoiser / pure_noise: losses and eval, no weights).
set -u
OUT=${OUT:-/tmp/gpu-session}; mkdir -p "$OUT"
W=${W:-/tmp/gpu-work}; mkdir -p "$W"
PY=${PY:-python3}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(el) s] $*" | tee -a "$W/session.log"; }
snap() { ( cd "$W" && tar czf "$OUT/.logs.tmp" --exclude='*.safetensors' --exclude='*.tar' --exclude=./tars . 2>/dev/null && mv "$OUT/.logs.tmp" "$OUT/logs.tar.gz" ); }
TRAIN_DEADLINE=${1:-330}
END=${2:-560}
left() { echo $(( END - $(el) )); }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DIFFACCEL_MNIST_DIR=${DIFFACCEL_MNIST_DIR:-$PWD/.gpudata/mnist}
RUNS=$W/runs
mkdir -p "$RUNS"
MODELS="ddpm_class ddpm_time flow_class flow_time denoiser pure_noise"
SHIP="ddpm_class ddpm_time flow_class flow_time"

log "machine"; { nvidia-smi -L; nproc; $PY -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'; } 2>&1 | tee -a "$W/session.log"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site" && log "diffusers from .whl installed"
fi

log "training the six course configs on the GPU (background, one process each)"
for p in $MODELS; do
  ( OMP_NUM_THREADS=1 exec $PY -m diffaccel.cli mnist train --preset "$p" --out "$RUNS/$p" --device cuda \
      --no-progress --resume > "$RUNS/$p.train.log" 2>&1 ) &
  echo $! > "$RUNS/$p.pid"
done

log "building diffaccel._C with the CUDA kernels (sm_90)"
DIFFACCEL_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=10 timeout 240 $PY setup.py build_ext --inplace \
  > "$W/build.log" 2>&1 && log "build OK" || log "BUILD FAILED (see build.log)"
$PY -c 'import diffaccel; print("backends on cuda:", diffaccel.available_backends("cuda"))' 2>&1 | tee -a "$W/session.log"
snap

log "GPU tests (pytest -m gpu)"
timeout $(( TRAIN_DEADLINE - $(el) > 60 ? TRAIN_DEADLINE - $(el) : 60 )) \
  $PY -m pytest -v -rf -m gpu -n 6 -p no:cacheprovider tests/ > "$W/pytest-gpu.log" 2>&1  # -v: a cut run still names its failures
log "pytest exit $?: $(tail -1 "$W/pytest-gpu.log")"
snap

log "waiting for training (deadline ${TRAIN_DEADLINE} s)"
for p in $MODELS; do
  pid=$(cat "$RUNS/$p.pid")
  while kill -0 "$pid" 2>/dev/null && [ "$(el)" -lt "$TRAIN_DEADLINE" ]; do sleep 2; done
  if kill -0 "$pid" 2>/dev/null; then kill "$pid"; log "$p: killed at the deadline (resumable)"; else log "$p: finished"; fi
  cp "$RUNS/$p.train.log" "$RUNS/$p/train.log" 2>/dev/null
done
wait
snap

pack() {
  $PY scripts/gpu_pack.py "$RUNS" "$W/tars" --snapshot 5 --names $SHIP >> "$W/pack.log" 2>&1
  for p in $SHIP; do cp "$W/tars/run-$p.tar" "$OUT/" 2>/dev/null; done
  ( cd "$W/tars" && tar cf "$OUT/runs-small.tar" run-denoiser.tar run-pure_noise.tar 2>/dev/null )
}
evaluate() {  # evaluate NAME [extra args]: the shipped (fp16) weights, if time is left
  local p=$1; shift
  [ -f "$RUNS/$p/model.safetensors" ] || return 0
  [ "$(left)" -gt 30 ] || { log "eval $p skipped (time)"; return 0; }
  timeout $(( $(left) - 20 )) $PY -m diffaccel.cli mnist eval --model "$RUNS/$p" --device cuda --no-progress "$@" \
    --json "$RUNS/$p/eval.json" >> "$W/eval.log" 2>&1
  log "eval $p exit $?"
  snap
}

log "fp16 weights for shipping, packed into \$OUT"
pack
log "packed"; snap
evaluate ddpm_class --num-steps 50 --sampler ddim

log "op benchmarks on the GPU (fp32, 16M elements)"
timeout 120 $PY benchmarks/run.py --device cuda --no-compile --json "$W/ops-h100.json" > "$W/ops-h100.md" 2>&1
log "ops exit $?"
timeout 45 $PY benchmarks/gpu_launches.py --json "$W/launches-h100.json" > "$W/launches-h100.log" 2>&1
log "launches exit $?"
snap

MODEL=ddpm_class; [ -f "$RUNS/ddpm_class/model.safetensors" ] && MODEL="$RUNS/ddpm_class"
timeout 80 $PY benchmarks/bench_mnist_cuda.py --model "$MODEL" --json "$W/mnist-h100.json" > "$W/mnist-h100.log" 2>&1
log "mnist bench exit $?"
snap
evaluate flow_class
evaluate denoiser
evaluate pure_noise
evaluate ddpm_time --num-steps 50 --sampler ddim
evaluate flow_time
if [ -f "$RUNS/ddpm_class/model.safetensors" ] && [ "$(left)" -gt 70 ]; then
  timeout $(( $(left) - 20 )) $PY -m diffaccel.cli mnist eval --model "$RUNS/ddpm_class" --device cuda --no-progress \
    --json "$RUNS/ddpm_class/eval_ddpm300.json" >> "$W/eval.log" 2>&1; log "eval ddpm_class, 300-step DDPM, exit $?"
fi
pack
log "done"
snap
ls -la "$OUT" | tee -a "$W/session.log"
