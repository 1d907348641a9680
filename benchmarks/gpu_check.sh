#!/usr/bin/env bash
# One run on a lent GPU machine (torch 2.11+cu130, triton 3.6, Python 3.12, nvcc 13.0,
# no network; run as root in the repository root): build with CUDA, test, sanitize,
# benchmark. Everything lands in $OUT (default benchmarks/results/gpu-check):
# gpu_check.log (this whole output), step-cuda-<date>.json, and the table.
#
#   GIT_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_check.sh
#
# Stages, each with a time limit inside one 10-minute call (GPU_CHECK_BUDGET_S,
# default 570 s); a failing stage is logged and the next one still runs; the
# script exits 1 at the end if any stage failed or ran out of time:
#   1. build     pip install -e . with LANGEVIN_CUDA=1 (never touches torch/triton)
#   2. device    nvidia-smi, backends
#   3. gpu tests pytest -m gpu tests/test_gpu.py
#   4. memcheck  compute-sanitizer --tool memcheck on the cuda backend, odd sizes,
#                misaligned views, every dtype, with the caching allocator off so
#                that every tensor is its own allocation (out-of-bounds is caught)
#   5. bench     benchmarks/gpu_step_bench.py (eager, compile, triton, cuda;
#                float32, bfloat16; 2^14..2^28)
#   6. cpu suite pytest -q -x tests (test_gpu.py already ran in stage 3); last,
#                because its run time on this machine is the least predictable
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/results/gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

BUDGET=${GPU_CHECK_BUDGET_S:-570}
PYTHON=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
START=$SECONDS
FAILED=()
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

# stage NAME LIMIT_S CMD...: runs CMD under a time limit clipped to the budget left.
stage() {
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    if (( left < 15 )); then
        echo "== [$name] NOT RUN: time budget spent"
        FAILED+=("$name (not run: no time left)")
        return
    fi
    (( limit > left )) && limit=$left
    echo
    echo "== [$name] start at +$((SECONDS - START)) s, limit ${limit} s: $*"
    t0=$SECONDS
    if declare -F "$1" > /dev/null; then  # a function of this script: run it in a child bash
        timeout --kill-after=10 "$limit" bash -o pipefail -c "$1"
    else
        timeout --kill-after=10 "$limit" "$@"
    fi
    rc=$?
    echo "== [$name] rc=$rc after $((SECONDS - t0)) s"
    if (( rc == 124 || rc == 137 )); then
        FAILED+=("$name (timed out after ${limit} s)")
    elif (( rc != 0 )); then
        FAILED+=("$name (rc=$rc)")
    fi
}

build() {
    CUDA_HOME="$CUDA_HOME" TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} LANGEVIN_CUDA=1 \
        "$PYTHON" -m pip install --no-build-isolation --no-deps -e . || return 1
    "$PYTHON" - <<'EOF'
import torch
import langevin_kernels as lk
ops = ("_ext_step", "_ext_normal", "_ext_philox")
missing = [op for op in ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"langevin_kernels::{op}", "CUDA")]
print("backends:", lk.backends())
raise SystemExit(f"no CUDA kernel registered for {missing}" if missing else 0)
EOF
}

device_info() {
    nvidia-smi || return 1
    "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'device', torch.cuda.get_device_name(0))"
}

memcheck() {
    local sanitizer="" candidate
    for candidate in "$(command -v compute-sanitizer)" "$CUDA_HOME/bin/compute-sanitizer" \
            "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
        [[ -n "$candidate" && -x "$candidate" ]] && { sanitizer=$candidate; break; }
    done
    [[ -n "$sanitizer" ]] || { echo "compute-sanitizer not found (PATH, $CUDA_HOME)"; return 1; }
    cat > "$SCRATCH/memcheck_run.py" <<'EOF'
# Every path of the cuda backend on small odd sizes: vector and element-wise paths
# (aligned and one-element-shifted views), tails, explicit and internal noise,
# rng_state, in place, every dtype; normal and philox entry points.
import torch
from langevin_kernels import dispatch

assert dispatch.unavailable_reason("cuda", "cuda") is None, dispatch.unavailable_reason("cuda", "cuda")
state = torch.tensor([7, 2**32 - 2], dtype=torch.int64, device="cuda")
for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    for numel in (1, 3, 5, 8, 9, 13, 4097, 65539):
        for shift in (0, 1):
            def view():
                return torch.randn(numel + shift, device="cuda").to(dtype)[shift:]
            x, g, noise, out = view(), view(), view(), view()
            for n in (None, noise):
                dispatch.run_step("cuda", x, g, n, out, 0.1, 0.2, 0.5, -1.0, 1.0, 3, 2**32 - 1, None)
            dispatch.run_step("cuda", x, g, None, x, 0.1, 0.2, 0.0, float("-inf"), float("inf"), 0, 5, state)
for numel in (1, 3, 5, 4097):
    for shift in (0, 1):
        out = torch.empty(numel + shift, device="cuda")[shift:]
        dispatch.run_normal("cuda", out, 1, 2**32 - 1, None)
        dispatch.run_normal("cuda", out, 1, 0, state)
words = dispatch.run_philox("cuda", torch.zeros(5, 4, dtype=torch.int64, device="cuda"), 1, 2)
torch.cuda.synchronize()
print("memcheck run done:", words.shape)
EOF
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --leak-check no --error-exitcode 3 \
        "$PYTHON" "$SCRATCH/memcheck_run.py"
}

export -f build device_info memcheck
export PYTHON SCRATCH
stage build 240 build
stage device 30 device_info
stage "gpu tests" 200 "$PYTHON" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider --durations=10
stage memcheck 150 memcheck
stage bench 240 "$PYTHON" benchmarks/gpu_step_bench.py --out "$OUT"
stage "cpu suite" 400 "$PYTHON" -m pytest -q -x tests --ignore=tests/test_gpu.py -p no:cacheprovider --durations=10

echo
echo "== gpu_check finished in $((SECONDS - START)) s; files in $OUT"
if (( ${#FAILED[@]} )); then
    printf '== FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "== all stages passed"
