"""bench/throughput.py and bench/reference_code_step.py: the trainer's math, complete JSON, exact FLOP counting."""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import reference_code_step, throughput  # noqa: E402
from jepa.config import load_config  # noqa: E402
from jepa.cpu import cpu_flags, cpu_has_bf16_matmul, cpu_model  # noqa: E402
from jepa.train import Trainer  # noqa: E402
from small_config import SMALL_BASE  # noqa: E402

SMALL = {**SMALL_BASE, "model.pred_depth": "2", "data.batch_size": "16", "data.subset": "256",
         "optim.warmup_epochs": "0.5", "optim.lr": "1e-2"}


def small_cfg(**over):
    return load_config(None, {**SMALL, **over})


@pytest.mark.parametrize("over", [{}, {"masks.nenc": "2", "loss.type": "smooth_l1"}], ids=["mse", "2ctx-smoothl1"])
def test_reference_step_is_the_same_math_as_the_trainer(tmp_path, over):
    cfg = small_cfg(**{"training.precision": "fp32", **over})
    ours = Trainer(cfg, run_dir=tmp_path / "a")
    theirs = Trainer(cfg, run_dir=tmp_path / "b")
    theirs.model.load_state_dict(ours.model.state_dict())
    ref = reference_code_step.ReferenceStep(theirs)
    stream = ours.micro_batches()
    for _ in range(3):
        batch = next(stream)
        loss = ours.train_step(batch)["loss"]
        loss_ref = ref.train_step(batch)
        torch.testing.assert_close(loss_ref, loss, rtol=1e-5, atol=1e-7)
    before = dict(Trainer(cfg, run_dir=tmp_path / "c").model.named_parameters())
    for (name, p), q in zip(ours.model.named_parameters(), theirs.model.parameters()):
        assert not torch.equal(p, before[name]), f"{name} never changed: the comparison would be vacuous"
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_reference_refuses_what_it_has_no_equivalent_for(tmp_path):
    trainer = Trainer(small_cfg(**{"model.num_hierarchies": "2", "model.predictor_shared_context": "true"}),
                      run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"model.num_hierarchies=2 .*predictor_shared_context=true"):
        reference_code_step.ReferenceStep(trainer)


def test_reference_helpers_keep_mask_major_order():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    masks = [torch.tensor([[0, 4], [1, 2]]), torch.tensor([[3, 3], [0, 1]])]
    out = reference_code_step.apply_masks(x, masks)
    assert torch.equal(out[0], x[0, [0, 4]]) and torch.equal(out[3], x[1, [0, 1]])
    rep = reference_code_step.repeat_interleave_batch(out, 2, repeat=2)  # (mask, copy, image)
    assert torch.equal(rep[:2], out[:2]) and torch.equal(rep[2:4], out[:2]) and torch.equal(rep[4:6], out[2:])


@pytest.mark.parametrize("reference", [False, True])
def test_meta_flop_count_equals_a_real_step(tmp_path, reference):
    """Counted on meta tensors = counted on a real step with explicit attention (FlopCounterMode has no
    formula for CPU's fused SDPA kernel, so a real CPU count with SDPA would leave attention out)."""
    cfg = small_cfg(**{"model.attention": "math"})
    trainer = Trainer(cfg, run_dir=tmp_path)
    batch = next(trainer.micro_batches())[0]
    counted = throughput.FlopCounter(cfg, reference)(batch)
    model = copy.deepcopy(trainer.model)
    with FlopCounterMode(display=False) as real:
        if reference:
            out = reference_code_step.forward_loss(model, batch)
        else:
            with torch.no_grad():
                model.target_encoder(batch.images)
            _, preds = model(batch.images, batch.ctx_idx, batch.tgt_idx, batch.block_hw)
            out = preds[0].sum()
        out.backward()
    assert counted == real.get_total_flops() > 0


def test_benchmark_writes_the_json_keys(tmp_path, capsys):
    out = tmp_path / "bench.json"
    config = tmp_path / "small.yaml"
    config.write_text("model: {embed_dim: 32, depth: 2, num_heads: 2}\n")
    args = ["--config", str(config), "--steps", "3", "--warmup", "1", "--phase-steps", "2", "--out", str(out)]
    args += [a for k, v in SMALL.items() for a in (f"--{k}", v)]
    assert throughput.main(args) == 0
    record = json.loads(out.read_text())
    for key in ("images_per_s", "mfu", "flops_per_step", "aten_ops_per_step", "peak_mem_bytes", "phases"):
        assert key in record, key
    assert record["images_per_s"] > 0 and 0 < record["mfu"] < 1.5 and record["aten_ops_per_step"] > 100
    assert record["peak_mem_bytes"] > 2 ** 20 and record["flops_per_step"] > 1e6
    labels = {"data", "masks", "target_forward", "context_forward", "predictor", "loss", "backward", "optimizer",
              "ema", "other"}
    assert set(record["phases"]) == labels
    assert sum(p["fraction"] for p in record["phases"].values()) == pytest.approx(1.0, abs=1e-6)
    ops = record["top_ops"]
    assert ops and all(a["ms_per_step"] >= b["ms_per_step"] > 0 for a, b in zip(ops, ops[1:]))
    assert 0 < record["matmul_fraction"] < 1 and sum(o["fraction"] for o in ops) <= 1 + 1e-9
    assert any(o["op"] in ("aten::addmm", "aten::mm") for o in ops)
    assert "images/s" in capsys.readouterr().out


def test_reference_flag_and_table():
    rows = [{"label": "reference", "images_per_s": 100.0, "step_s_median": 1.0, "mfu": 0.5, "flops_per_step": 2e9,
             "aten_ops_per_step": 10, "peak_mem_bytes": 2 ** 20, "data_masks_optimizer_ema_fraction": 0.1},
            {"label": "fast", "images_per_s": 150.0, "step_s_median": 0.5, "mfu": 0.75, "flops_per_step": 2e9,
             "aten_ops_per_step": 5, "peak_mem_bytes": 2 ** 20, "data_masks_optimizer_ema_fraction": 0.05},
            {"label": "broken", "error": "boom"}]
    text = throughput.table(rows)
    assert "| fast | 150 | 1.50x | 500 | 75 % |" in text and "| broken | failed: boom" in text


def test_table_compares_each_precision_with_its_own_reference():
    def row(label, ips, precision, reference=False):
        return {"label": label, "images_per_s": ips, "step_s_median": 128 / ips, "mfu": 0.5, "flops_per_step": 1e9,
                "aten_ops_per_step": 10, "peak_mem_bytes": 2 ** 20, "data_masks_optimizer_ema_fraction": 0.01,
                "settings": {"precision": precision, "reference": reference}}
    text = throughput.table([row("reference", 100.0, "float32", True), row("ours", 120.0, "float32"),
                             row("reference bf16", 400.0, "bfloat16", True), row("ours bf16", 600.0, "bfloat16")])
    assert "| ours | 120 | 1.20x |" in text and "| ours bf16 | 600 | 1.50x |" in text


def test_all_runs_a_reference_row_per_precision():
    rows = throughput.combinations(torch.device("cpu"), ["false"], ["fp32", "bf16"])
    refs = [(label, over) for label, over, reference in rows if reference]
    assert refs == [("reference fp32", {"training.precision": "fp32"}), ("reference bf16", {"training.precision": "bf16"})]
    assert all(over["training.precision"] in label for label, over, _ in rows)
    assert [label for label, _, _ in throughput.combinations(torch.device("cpu"), ["false"])][0] == "reference"


def test_bf16_matmul_detection_reads_the_cpu_flags():
    assert cpu_has_bf16_matmul("processor: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_bf16_matmul("flags : sse amx_tile amx_bf16\n")
    assert not cpu_has_bf16_matmul("flags : fpu avx2 avx512f avx512bw\nbugs : avx512_bf16\n")
    assert not cpu_has_bf16_matmul("")


@pytest.mark.parametrize("argv,message", [
    (["--precisions", "fp32"], "--precisions only applies to --all"),
    (["--all", "--precisions", "fp32,bf16,fp32"], "distinct values of fp32, bf16, fp16"),
    (["--all", "--precisions", "bfloat16"], "got 'bfloat16'")])
def test_precisions_are_checked_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        throughput.main(["--config", "configs/bench_fmnist_tiny.yaml", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bad_override_is_a_clear_error(capsys):
    assert throughput.main(["--config", "configs/bench_fmnist_tiny.yaml", "--model.depht", "3"]) == 2
    assert "unknown config key 'model.depht'; did you mean 'depth'?" in capsys.readouterr().err


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse4_2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
"""


def test_cpu_model_and_flags_are_read_from_cpuinfo_in_the_asked_order():
    assert cpu_model(CPUINFO) == "Intel(R) Xeon(R) Platinum 8488C"
    assert cpu_flags(cpuinfo=CPUINFO) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert cpu_flags(("amx_tile", "sse4_2", "avx512_vnni"), cpuinfo=CPUINFO) == ["amx_tile", "sse4_2"]
    assert cpu_flags(cpuinfo="model name : x\nflags : avx avx512fx\n") == []  # whole flags only
    assert cpu_model("flags : avx2\n") != ""  # no model line: falls back to platform
