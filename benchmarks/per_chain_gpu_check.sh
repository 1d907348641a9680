#!/usr/bin/env bash
# The per-chain step-size GPU check (issue 16 item 2), one call on a lent GPU machine:
# build with CUDA, the gpu-marked per-chain op tests (cuda and triton backends), the GPU cases
# of the existing op tests, and an adapted MALA chain on CUDA (acceptance band, no host sync).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/per-chain-gpu}; mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
t0=$SECONDS
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 LANGEVIN_CUDA=1 MAX_JOBS=$(nproc) \
    "$PYTHON" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $((SECONDS - t0)) s"
"$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_per_chain_op.py tests/test_adaptive_mala.py 2>&1 | tail -15
"$PYTHON" -m pytest -q -p no:cacheprovider -x -m gpu tests/test_ops.py tests/test_op_registration.py 2>&1 | tail -5
"$PYTHON" - <<'PY'
import time, torch, langevin_kernels as lk
from langevin_kernels.targets import IllConditionedGaussian
t = IllConditionedGaussian()
B = 256
x0 = (t.mean + torch.logspace(-2, 1, B, dtype=torch.float64)[:, None] * torch.randn(B, 10, dtype=torch.float64)).cuda()
energy = lambda x: t.energy(x)
chain = lk.DataChain(energy, n_steps=2000, step_size=0.01, noise_scale=0.02 ** 0.5, mala=True,
                     adapt_step_size=True, warmup=1000, seed=3, on_nonfinite="ignore")
torch.cuda.synchronize(); s = time.time(); chain.run(x0); torch.cuda.synchronize()
acc = chain.stats.acceptance_per_chain
print(f"cuda adapted MALA: {(time.time() - s) / 3000 * 1e6:.0f} us/step, in band "
      f"{((acc >= 0.5) & (acc <= 0.65)).float().mean().item():.3f}, steps {chain.step_sizes_per_chain.min().item():.4f}"
      f"..{chain.step_sizes_per_chain.max().item():.4f}")
PY
echo "total: $((SECONDS - t0)) s"
