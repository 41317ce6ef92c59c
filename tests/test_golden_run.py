"""Golden runs: the losses of the first 30 steps of two fixed configs, to the last bit.

They pin the numbers through refactors: a change that reorders one floating-point
operation of the step shows up here. The values are those of one CPU kind
(``torch.backends.cpu.get_cpu_capability()``); on another SIMD kind the matrix kernels
round differently, so there the curve is compared to a relative 1e-4 instead.
Re-record with ``python tests/test_golden_run.py --record`` only for a deliberate change of the numbers.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
from jepa.config import load_config  # noqa: E402
from jepa.train import Trainer  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "losses.json"
STEPS = 30
COMMON = {"training.device": "cpu", "training.precision": "fp32", "training.seed": "0", "training.kernels": "torch",
          "logging.tensorboard": "false", "logging.progress": "false"}
RUNS = {
    "quick_validation": ("configs/quick_validation.yaml", {}),
    # H-JEPA, 3 levels, with the combined loss's VICReg term: every loss path of the step
    "hjepa_3level_small": ("configs/quick_validation.yaml",
                           {"model.num_hierarchies": "3", "loss.type": "combined", "loss.vicreg_weight": "0.01"}),
}


def capability() -> str:
    return f"{torch.backends.cpu.get_cpu_capability()}-torch{torch.__version__.split('+')[0]}"


def run_losses(name: str, run_dir: Path) -> list[float]:
    path, over = RUNS[name]
    cfg = load_config(ROOT / path, {**COMMON, **over})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg, run_dir=run_dir)
        losses = []
        for group in trainer.micro_batches():
            if group is None:
                continue
            losses.append(trainer.train_step(group)["loss"].item())
            if len(losses) == STEPS:
                break
    finally:
        torch.set_num_threads(threads)
    return losses


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_losses(name, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    got = run_losses(name, tmp_path)
    assert len(got) == STEPS
    recorded = golden[name]
    if capability() in recorded:
        want = [float.fromhex(h) for h in recorded[capability()]]
        diffs = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        assert not diffs, f"{name}: losses differ from the golden run at steps {diffs[:5]} (first: {got[diffs[0]]!r} " \
                          f"vs {want[diffs[0]]!r})"
    else:
        want = [float.fromhex(h) for h in next(iter(recorded.values()))]
        assert got == pytest.approx(want, rel=1e-4)


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile
    data = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    for name in sorted(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            losses = run_losses(name, Path(tmp))
        data.setdefault(name, {})[capability()] = [x.hex() for x in losses]
        print(name, capability(), losses[:3], "...", losses[-1])
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
