#!/usr/bin/env bash
# The one prepared GPU run (issue 15): build with CUDA, time, test, sanitize, resume, in one call
# of <= 9 minutes on an H100/H200 with no network. Run from anywhere; it works in the checkout.
#
#   GIT_COMMIT=<sha> bash benchmarks/gpu_check.sh --bundle           # on the lent GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                            # here, on the CPU, first
#   bash benchmarks/gpu_check.sh --only chain,train --bundle          # some stages, in the order named
#   bash benchmarks/gpu_check.sh --bundle --only wheels,build,machine,gpu-tests,chain,train,step,resume,memcheck
#                                       # untested CUDA kernels waiting: their tests before the figures
#   bash benchmarks/gpu_check.sh --list                               # the stage names
#
# Stages, in this order, each under its own time limit (clipped to what is left of
# GPU_CHECK_BUDGET_S, default 540 s); a failed or timed-out stage is recorded and the next runs:
#   wheels     pip-install the carried wheels in .whl/ (torchebm; no network there) into a
#              scratch site folder put on PYTHONPATH
#   build      pip install -e . with LANGEVIN_CUDA=1, then check the cuda backend is available
#   machine    nvidia-smi and the machine record (machine.json)
#   step       python -m benchmarks.run --suite step --quick: 2^16..2^28, fp32 and bf16, eager,
#              torch.compile, triton, cuda, torchebm; device time by CUDA events, % of copy
#   chain      --suite chain --quick: MLP 4096x32 first (issue 15's target case), double-wells,
#              latent, conv; eager loop, torch.compile step, lk chains per backend, lean,
#              capture_graph=True, compile=True (where the chains have it), torchebm, JAX
#   train      --suite train --quick: toy2d and cifar10-shaped dual-MCMC iterations, eager-op vs
#              fused vs compile / graph (where TrainConfig has them) vs bf16 autocast
#   resume     a toy2d run checkpointed on the GPU and resumed through langevin-train
#   gpu-tests  pytest -m gpu (junit XML kept)
#   memcheck   compute-sanitizer --tool memcheck over benchmarks/memcheck_ops.py (cuda and
#              triton backends, odd sizes, misaligned views, every dtype), caching allocator off
# The figures only a GPU can give come first; the tests come last because a rerun can repeat them.
#
# Output: $OUT (default runs/gpu-check) gets gpu_check.log and gpu_check_summary.json (one entry
# per stage: status, rc, seconds). Results (suite JSON + PNG, machine.json, resume.json,
# gpu_tests.xml) go to $OUT/results, or with --bundle into one $OUT/gpu_check_results.tar.gz,
# repacked after every stage (the device tool returns at most 8 files).
# --dry-run: no GPU. build only checks that the built extension imports (this never rebuilds
# it), the suites run --smoke on the CPU, resume runs on the CPU, gpu-tests only collects,
# memcheck runs the driver on the cpp backend without the sanitizer.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STAGES=(wheels build machine step chain train resume gpu-tests memcheck)
# Seen on the H200 of 2026-12-04 (torch 2.11, compiled chains falling back then): build 53 s,
# gpu-tests 96, chain 143, train 61, step 42, resume 43, memcheck 50. Compiled blocks that really
# compile on the GPU add inductor time to chain, train and gpu-tests: their limits leave room.
declare -A LIMIT=([wheels]=30 [build]=150 [machine]=30 [step]=100 [chain]=240 [train]=150 [resume]=75
                  [gpu-tests]=180 [memcheck]=80)
DRY=0 BUNDLE=0 ONLY=""
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (( $# )); do
    case $1 in
        --dry-run) DRY=1 ;;
        --bundle) BUNDLE=1 ;;
        --only) ONLY=${2:?--only needs a comma-separated list of stages}; shift ;;
        --list) printf '%s\n' "${STAGES[@]}"; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (allowed: --dry-run --bundle --only S1,S2 --list)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -n $ONLY ]]; then
    for s in ${ONLY//,/ }; do
        [[ " ${STAGES[*]} " == *" $s "* ]] || { echo "gpu_check.sh: --only: unknown stage '$s' (stages: ${STAGES[*]})" >&2; exit 2; }
    done
fi

OUT=${OUT:-$ROOT/runs/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
if (( BUNDLE )); then RESULTS=$SCRATCH/results; else RESULTS=$OUT/results; fi
mkdir -p "$RESULTS"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

if [[ -z ${PYTHON:-} ]]; then
    if (( DRY )) && [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
BUDGET=${GPU_CHECK_BUDGET_S:-540}
DEVICE=cuda SUITE_MODE=--quick
if (( DRY )); then DEVICE=cpu SUITE_MODE=--smoke; fi
SITE=$SCRATCH/site
export PYTHON DEVICE SUITE_MODE RESULTS SCRATCH DRY ROOT SITE
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false     # JAX shares the GPU with torch instead of taking 75 %
# Where the tree travelled without .git, pass GIT_COMMIT=<sha> (the machine records read it).
COMMIT=${GIT_COMMIT:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)}
START=$SECONDS
SUMMARY=()

pack() {
    (( BUNDLE )) || return 0
    tar -czf "$OUT/gpu_check_results.tar.gz.tmp" -C "$RESULTS" . && \
        mv "$OUT/gpu_check_results.tar.gz.tmp" "$OUT/gpu_check_results.tar.gz"
}

write_summary() {
    local IFS=,
    "$PYTHON" - "$OUT/gpu_check_summary.json" "$DRY" "$COMMIT" "$((SECONDS - START))" "${SUMMARY[*]:-}" <<'EOF'
import json, sys
path, dry, commit, total, entries = sys.argv[1:6]
stages = []
for entry in filter(None, entries.split(",")):
    name, status, rc, seconds, limit = entry.split(":")
    stages.append({"stage": name, "status": status, "rc": int(rc), "seconds": int(seconds), "limit_s": int(limit)})
json.dump({"dry_run": dry == "1", "git_commit": commit, "total_s": int(total), "stages": stages}, open(path, "w"), indent=1)
EOF
}

# stage NAME FUNCTION: runs FUNCTION in a child bash under the stage's limit (clipped to the budget).
stage() {
    local name=$1 fn=$2 limit=${LIMIT[$1]} left rc t0 status
    if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then return; fi
    left=$((BUDGET - (SECONDS - START) - 10))       # 10 s kept for packing and the summary
    if (( left < 15 )); then
        echo "== [$name] NOT RUN: the ${BUDGET} s budget is spent"
        SUMMARY+=("$name:not-run:0:0:0")
        return
    fi
    (( limit > left )) && limit=$left
    echo
    echo "== [$name] start at +$((SECONDS - START)) s, limit ${limit} s"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" bash -o pipefail -c "$fn"
    rc=$?
    if (( rc == 124 || rc == 137 )); then status=timed-out
    elif (( rc == 0 )); then status=passed
    elif (( rc == 99 )); then status=skipped; rc=0
    else status=failed; fi
    echo "== [$name] $status (rc=$rc) after $((SECONDS - t0)) s"
    SUMMARY+=("$name:$status:$rc:$((SECONDS - t0)):$limit")
    pack
    write_summary
}

skip() { echo "SKIPPED: $*"; exit 99; }

st_wheels() {
    shopt -s nullglob
    local wheels=("$ROOT"/.whl/*.whl)
    (( ${#wheels[@]} )) || skip "no wheels in .whl/ (carry .whl with the call: torchebm is fetched there by pip download)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
    PYTHONPATH=$SITE "$PYTHON" -c "import torchebm, torch; print('torchebm', torchebm.__version__, 'with torch', torch.__version__)"
}

st_build() {
    if (( DRY )); then
        echo "dry run: the extension is not rebuilt here (shared machine); checking the existing build"
        "$PYTHON" -c "import langevin_kernels as lk; print('backends:', lk.backends()); \
assert lk.backends()['cpp'] == 'available', 'the C++ extension is not built: make build'"
        return
    fi
    CUDA_HOME="$CUDA_HOME" TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} LANGEVIN_CUDA=1 \
        MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PYTHON" -m pip install --no-build-isolation --no-deps -e . || return 1
    "$PYTHON" - <<'EOF'
import langevin_kernels as lk
from langevin_kernels import dispatch
print("backends:", lk.backends())
for name in ("cuda", "triton"):
    reason = dispatch.unavailable_reason(name, "cuda")
    if reason:
        raise SystemExit(f"the {name} backend cannot run CUDA tensors after the build: {reason}")
EOF
}

st_machine() {
    if (( DRY )); then echo "dry run: no nvidia-smi"; else nvidia-smi || return 1; fi
    "$PYTHON" - "$RESULTS/machine.json" "$DEVICE" <<'EOF'
import json, subprocess, sys
import torch
sys.path.insert(0, ".")
from benchmarks.suites import common
record = common.write_machine_record(sys.argv[1], torch.device(sys.argv[2]))
if sys.argv[2] == "cuda":
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
    smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True)
    record["nvidia_smi"] = dict(zip(query.split(","), [v.strip() for v in smi.stdout.split(",")]))
    json.dump(record, open(sys.argv[1], "w"), indent=1, default=str)
print(json.dumps(record, indent=1, default=str))
EOF
}

suite() { "$PYTHON" -m benchmarks.run --suite "$1" --device "$DEVICE" $SUITE_MODE --out "$RESULTS" "${@:2}"; }
st_step() { suite step; }
st_chain() { suite chain --cases mlp,dw-small,dw-large,latent,conv; }
st_train() { suite train; }

st_resume() {
    local iters=20
    (( DRY )) && iters=4
    "$PYTHON" -m benchmarks.resume_check --device "$DEVICE" --iters $iters --out "$SCRATCH/resume" \
        --json "$RESULTS/resume.json"
}

st_gpu_tests() {
    if (( DRY )); then
        echo "dry run: collecting the GPU tests only"
        "$PYTHON" -m pytest -m gpu tests --collect-only -q -p no:cacheprovider | tail -3
        return
    fi
    "$PYTHON" -m pytest -m gpu tests -q -p no:cacheprovider --durations=10 --timeout=120 \
        --junitxml="$RESULTS/gpu_tests.xml"
}

st_memcheck() {
    if (( DRY )); then
        echo "dry run: the driver on the cpp backend, without compute-sanitizer"
        "$PYTHON" -m benchmarks.memcheck_ops --device cpu
        return
    fi
    local sanitizer="" candidate
    for candidate in "$(command -v compute-sanitizer)" "$CUDA_HOME/bin/compute-sanitizer" \
            "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
        [[ -n $candidate && -x $candidate ]] && { sanitizer=$candidate; break; }
    done
    [[ -n $sanitizer ]] || { echo "compute-sanitizer not found (PATH, $CUDA_HOME)"; return 1; }
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --leak-check no --error-exitcode 3 \
        "$PYTHON" -m benchmarks.memcheck_ops --device cuda
}

export -f skip suite st_wheels st_build st_machine st_step st_chain st_train st_resume st_gpu_tests st_memcheck

# The run is one function, read whole before it starts: editing this file during a run (as a
# dry run invites) cannot make bash re-read shifted lines.
run_all() {
    echo "== gpu_check: $( ((DRY)) && echo 'DRY RUN on the CPU' || echo 'GPU run'), commit $COMMIT, python $PYTHON," \
        "budget ${BUDGET} s, results in $( ((BUNDLE)) && echo "$OUT/gpu_check_results.tar.gz" || echo "$RESULTS")"
    local order=("${STAGES[@]}") name
    [[ -n $ONLY ]] && read -ra order <<< "${ONLY//,/ }"
    for name in "${order[@]}"; do
        stage "$name" "st_${name//-/_}"
        if [[ $name == wheels && -f $SITE/torchebm/__init__.py ]]; then
            export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
        fi
    done
    pack
    write_summary
    echo
    echo "== gpu_check finished in $((SECONDS - START)) s; log, summary$( ((BUNDLE)) && echo ' and results tarball') in $OUT"
    local failed=0 entry name status seconds
    for entry in "${SUMMARY[@]}"; do
        IFS=: read -r name status _ seconds _ <<< "$entry"
        printf '==   %-10s %-9s %4s s\n' "$name" "$status" "$seconds"
        [[ $status == passed || $status == skipped ]] || failed=1
    done
    return $failed
}
run_all; exit $?
