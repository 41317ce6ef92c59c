#!/usr/bin/env bash
# After the tests: with the newest transformers installed beside us, the CLIs work from a directory outside
# the repository (no repo on sys.path), the dependency set is consistent, and an HF export round-trips.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
pip install -q -U transformers
pip check
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
python - <<'PY'
import kernels, jepa_kernels, jepa
assert "site-packages" in kernels.__file__, f"'import kernels' gave {kernels.__file__}, not Hugging Face's package"
print("import kernels ->", kernels.__file__)
PY
python -m jepa.train --config "$repo/configs/quick_validation.yaml" --logging.run_dir "$work/run" \
    --training.stop_at_step 3 --data.subset 256
ckpt="$(ls "$work"/run/checkpoints/ckpt_step*.pt | head -n 1)"
python -m jepa.export --checkpoint "$ckpt" --format hf --out "$work/hf"
test -d "$work/hf"
python - "$ckpt" "$work/hf" <<'PY'
import sys
import torch
from transformers import IJepaModel
import jepa
ckpt, hf = sys.argv[1:]
ours = jepa.load_encoder(ckpt).eval()
theirs = IJepaModel.from_pretrained(hf).eval()
x = torch.randn(2, 1, 28, 28)
with torch.no_grad():
    diff = (ours(x) - theirs(pixel_values=x).last_hidden_state).abs().max().item()
assert diff <= 1e-5, f"HF round trip differs by {diff}"
print(f"HF export round trip from {sys.argv[2]}: max |difference| {diff:.2e}")
PY
echo "outside-repo check: OK"
