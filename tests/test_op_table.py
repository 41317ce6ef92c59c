"""bench/op_table.py: op names land in the right classes and a profiled step's time is attributed, matmul first."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import op_table  # noqa: E402


@pytest.mark.parametrize("name,cls", [("aten::addmm", "matmul"), ("aten::bmm", "matmul"),
                                      ("aten::_to_copy", "casts and copies"), ("aten::native_layer_norm", "layer norm"),
                                      ("aten::gelu_backward", "GELU"), ("aten::_softmax", "attention"),
                                      ("jepa_kernels::masked_target_loss", "gather and loss"),
                                      ("aten::_foreach_lerp_", "optimizer"), ("aten::add_", "elementwise"),
                                      ("aten::empty", "other")])
def test_op_names_fall_in_their_class(name, cls):
    assert op_table.op_class(name) == cls


def test_a_profiled_tiny_step_is_mostly_attributed(tmp_path, monkeypatch):
    monkeypatch.setattr(op_table, "SHAPES", [("tiny", 64, 32, 16)])
    out = tmp_path / "ops.json"
    assert op_table.main(["--config", str(ROOT / "configs" / "quick_validation.yaml"), "--precisions", "fp32",
                          "--reps", "1", "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"]["fp32"]
    classes = row["classes_ms"]
    assert classes["matmul"] > 0 and sum(classes.values()) > 0
    assert set(row["shape_gflops"]) == {"tiny 64x32x16"} and row["matmul_peak_gflops"] > 0
    assert "| matmul |" in out.with_suffix(".md").read_text()
