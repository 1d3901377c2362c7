#!/usr/bin/env bash
# The device check for a machine with a CUDA GPU, run from the repository root with the checkout
# itself (PYTHONPATH=., no pip install) and a Python that already has numpy, numba, scipy, cupy,
# torch and jax. In at most 30+180+60+100+100 s = 7.8 minutes: versions, the gpu-marked tests
# (tests/cuda: each launcher; tests/gpu: the user paths), the model on device="cuda" against the
# CPU (tests/gpu/test_model_gpu.py, tests/test_model.py), the canonical model on the GPU against
# the CPU (scripts/gpu_model_check.py), and the bench's training, log-likelihood and per-op rows
# with their GPU columns. Log and results go to $OUT when it is set, else runs/gpu-check/. Without a CUDA GPU: prints "no CUDA GPU" and exits 3 at once.
# Exit 0 when every part passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
PY=${PYTHON:-python3}
DIR=${OUT:-runs/gpu-check}
mkdir -p "$DIR"
LOG="$DIR/gpu_check.log"

if ! "$PY" -c 'import cupy, sys; sys.exit(0 if cupy.cuda.is_available() and cupy.cuda.runtime.getDeviceCount() > 0 else 3)' 2>/dev/null; then
  echo "no CUDA GPU" | tee "$LOG"
  exit 3
fi

status=0
step() {   # step NAME SECONDS COMMAND...: run with a time limit, log it, remember a failure
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
}

step versions 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; '"$PY"' -c "import cupy, numpy, numba; print(\"CUDA runtime\", cupy.cuda.runtime.runtimeGetVersion(), \"driver\", cupy.cuda.runtime.driverGetVersion(), \"CuPy\", cupy.__version__, \"NumPy\", numpy.__version__, \"Numba\", numba.__version__)"'
step gpu-tests 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests --junitxml="$DIR/gpu-tests.xml"
step model-tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_model_gpu.py tests/test_model.py
step model-cpu-vs-gpu 100 "$PY" scripts/gpu_model_check.py --out "$DIR"
step bench 100 "$PY" -m fastvae.bench --quick --only train,loglik,ops --threads 1 --batches 128 --K 5000 --json "$DIR/bench.json" --figure "$DIR/bench.png"
echo "gpu_check: exit $status (log: $LOG)" | tee -a "$LOG"
exit $status
