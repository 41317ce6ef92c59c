#!/usr/bin/env bash
# One command that checks the kernels and the training step on a bare GPU machine in under 9 minutes.
#
#   bash bench/gpu_check.sh            # on a CUDA machine: results in $OUT, or ./gpu-results when OUT is unset
#   bash bench/gpu_check.sh --smoke    # the same steps on CPU with shrunken sizes (Triton interpreter), < 5 min
#
# Needs python3 with torch and Triton, nothing else (pytest only for the "tests" step, skipped without it).
# Every step runs under its own `timeout`, cut further so that the whole run stays within JEPA_CHECK_BUDGET
# seconds (510 on a GPU, 290 with --smoke); a step that fails or times out does not stop the ones after it.
# Writes exactly these files (6, flat) into the results folder:
#   env.txt      GPU, driver, torch, Triton, CUDA, C compiler, packages
#   tests.txt    tests/kernel_tests with compiled Triton (JEPA_REAL_TRITON=1)
#   kernels.json every kernel vs float64 in fp32/bf16 with poisoned outputs; GB/s vs the measured copy bandwidth
#                at B·N·D = 2048·256·1280 (L2 flushed), Triton vs the PyTorch path; EMA host time; K recompiles
#   steps.jsonl  ViT-B/16 224 px bf16 training step: compile off, compile on, bf16 residual stream
#                (images/s, MFU vs the measured bf16 matmul peak, peak memory, warm-up)
#   summary.md   all of it as tables, with the issue's targets marked met / not met
#   log.txt      every step's output and its status line
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
case "${1:-}" in
    --smoke) SMOKE=1 ;;
    "") ;;
    *) echo "usage: bash bench/gpu_check.sh [--smoke]" >&2; exit 2 ;;
esac
RESULTS="${OUT:-$PWD/gpu-results}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
rm -f "$RESULTS"/{env.txt,tests.txt,kernels.json,steps.jsonl,summary.md,log.txt}
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$RESULTS/log.txt"
START=$(date +%s)
FAILED=0

if [ "$SMOKE" = 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    BUDGET="${JEPA_CHECK_BUDGET:-290}"
    SMOKE_FLAG=(--smoke)
else
    unset TRITON_INTERPRET
    export JEPA_REAL_TRITON=1
    BUDGET="${JEPA_CHECK_BUDGET:-510}"
    SMOKE_FLAG=()
fi

# run_step NAME CAP_SECONDS COMMAND...: under timeout, never past the budget (20 s kept for the summary);
# JEPA_CHECK_STEPS (e.g. "env kernels step-eager") runs only the steps named, spaces in names as dashes
run_step() {
    local name="$1" cap="$2"; shift 2
    if [ -n "${JEPA_CHECK_STEPS:-}" ] && [[ " $JEPA_CHECK_STEPS " != *" ${name// /-} "* ]]; then
        echo "== $name: not selected (JEPA_CHECK_STEPS) ==" | tee -a "$LOG"
        return
    fi
    local left=$(( BUDGET - ($(date +%s) - START) - 20 ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 15 ]; then
        echo "== $name: skipped, ${left} s of the budget left ==" | tee -a "$LOG"; FAILED=1
        return
    fi
    echo "-- $name (limit ${limit} s)" | tee -a "$LOG"
    local t0=$(date +%s) rc
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [ "$rc" = 0 ]; then
        echo "== $name: ok in ${took} s ==" | tee -a "$LOG"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "== $name: TIMED OUT after ${took} s ==" | tee -a "$LOG"; FAILED=1
    else
        echo "== $name: FAILED (exit $rc) after ${took} s ==" | tee -a "$LOG"; FAILED=1
    fi
}

kernel_tests() {
    if ! "$PY" -c "import pytest" 2>/dev/null; then
        echo "pytest is not installed here: tests/kernel_tests did not run (kernels.json holds the float64 checks)" \
            | tee "$RESULTS/tests.txt"
        return 0
    fi
    local args=(tests/kernel_tests -q -p no:cacheprovider -rfE)
    if [ "$SMOKE" = 1 ]; then  # a subset through the interpreter: the suite itself runs all of them
        args=(tests/kernel_tests/test_gather.py tests/kernel_tests/test_target_loss.py tests/kernel_tests/test_ema.py -q
              -p no:cacheprovider -k "two_dim_idx or empty_list")
    else  # test_triton_compile lowers the kernels for sm_90 on a CPU machine: here they compile for real anyway
        args+=(--ignore=tests/kernel_tests/test_triton_compile.py)
    fi
    "$PY" -m pytest "${args[@]}" 2>&1 | tee "$RESULTS/tests.txt"
    return "${PIPESTATUS[0]}"
}
export -f kernel_tests  # run_step runs it through `timeout bash -c`
export PY SMOKE RESULTS

{
    echo "bench/gpu_check.sh $([ "$SMOKE" = 1 ] && echo --smoke) — results in $RESULTS, budget ${BUDGET} s"
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
} >>"$LOG" 2>&1
run_step env 60 "$PY" bench/gpu_check.py env --out "$RESULTS/env.txt"
if [ -f "$RESULTS/env.txt" ] && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed 's/^/nvidia-smi: /' >>"$RESULTS/env.txt"
fi

if [ "$SMOKE" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
    echo "== no CUDA GPU visible to torch: nothing to check here (bash bench/gpu_check.sh --smoke runs on CPU) ==" \
        | tee -a "$LOG"
    "$PY" bench/gpu_check.py summary "$RESULTS" >/dev/null 2>>"$LOG"
    exit 2
fi

if [ "$SMOKE" = 1 ]; then CAPS=(120 60 60 150 60); else CAPS=(150 120 100 200 80); fi
run_step kernels "${CAPS[0]}" "$PY" bench/gpu_kernels.py --out "$RESULTS/kernels.json" "${SMOKE_FLAG[@]}"
run_step tests "${CAPS[1]}" bash -c kernel_tests
run_step "step eager" "${CAPS[2]}" "$PY" bench/gpu_check.py step --variant eager --jsonl "$RESULTS/steps.jsonl" "${SMOKE_FLAG[@]}"
run_step "step compiled" "${CAPS[3]}" "$PY" bench/gpu_check.py step --variant compiled --jsonl "$RESULTS/steps.jsonl" "${SMOKE_FLAG[@]}"
run_step "step residual-bf16" "${CAPS[4]}" "$PY" bench/gpu_check.py step --variant residual-bf16 --jsonl "$RESULTS/steps.jsonl" "${SMOKE_FLAG[@]}"

echo "== total: $(( $(date +%s) - START )) s ==" | tee -a "$LOG"
"$PY" bench/gpu_check.py summary "$RESULTS" >/dev/null 2>>"$LOG" || FAILED=1
echo "results: $RESULTS ($(ls "$RESULTS" | tr '\n' ' '))"
exit $FAILED
