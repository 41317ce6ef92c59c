#!/usr/bin/env bash
# GPU validation + benchmark suite for the fused kernels (run on a CUDA machine).
#  1. tests/kernels with compiled Triton (JEPA_REAL_TRITON=1: no interpreter; bf16 tests run)
#  2. kernel benchmarks at full scale (JSON), incl. the device copy bandwidth
#  3. a table: time per call, GB/s, % of copy bandwidth, speed-up over the reference way
#  4. bench/throughput.py (training throughput) if it exists
# Output: bench/results/<gpu-name>/{tests.txt,bench.txt,kernels.json,table.md,throughput.txt}
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_suite.sh: nvidia-smi not found; this suite needs an NVIDIA GPU" >&2
    exit 1
fi
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)"
GPU_SLUG="$(echo "$GPU_NAME" | tr -cs 'A-Za-z0-9._-' '_' | sed 's/^_*//; s/_*$//')"
OUT="bench/results/${GPU_SLUG}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
status=0

{
    echo "gpu: $GPU_NAME"
    nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    git rev-parse HEAD 2>/dev/null || true
    date -u
} | tee "$OUT/env.txt"

echo "== tests/kernels (compiled Triton) =="
JEPA_REAL_TRITON=1 "$PY" -m pytest tests/kernels tests/test_attention.py -q -rs 2>&1 | tee "$OUT/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== kernel benchmarks =="
JEPA_BENCH_SCALE="${JEPA_BENCH_SCALE:-full}" "$PY" -m pytest bench/bench_kernel_copy.py bench/bench_kernel_gather.py \
    bench/bench_kernel_target_loss.py bench/bench_kernel_ema.py --benchmark-only -q \
    --benchmark-json="$OUT/kernels.json" --benchmark-columns=min,median,max,rounds 2>&1 | tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== table =="
"$PY" - "$OUT/kernels.json" "$GPU_NAME" <<'PYEOF' | tee "$OUT/table.md"
import json, sys
from collections import defaultdict

data = json.load(open(sys.argv[1]))["benchmarks"]
copy = [b for b in data if b["group"] == "copy"]
copy_gbps = copy[0]["extra_info"]["GB/s"] if copy else float("nan")
print(f"### Kernels on {sys.argv[2]} (copy bandwidth {copy_gbps:.0f} GB/s)\n")
print("| op | impl | time/call | GB/s | % of copy | vs reference |")
print("|---|---|---:|---:|---:|---:|")
groups = defaultdict(list)
for b in data:
    if b["group"] != "copy":
        groups[b["group"]].append(b)
for group, items in sorted(groups.items()):
    ref = [b for b in items if b["extra_info"]["impl"] == "reference"]
    ref_s = ref[0]["extra_info"]["seconds_per_call"] if ref else None
    for b in sorted(items, key=lambda b: b["extra_info"]["seconds_per_call"]):
        info = b["extra_info"]
        s = info["seconds_per_call"]
        speed = f"{ref_s / s:.2f}x" if ref_s else "-"
        print(f"| {group} | {info['impl']} | {s * 1e6:.1f} us | {info['GB/s']:.0f} | "
              f"{100 * info['GB/s'] / copy_gbps:.0f} % | {speed} |")
PYEOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== training throughput (bench/throughput.py) =="
"$PY" bench/throughput.py 2>&1 | tee "$OUT/throughput.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "results in $OUT"
exit $status
