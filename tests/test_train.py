"""The trainer end to end on real Fashion-MNIST data, and the order of one step (docs/algorithm.md#one-training-step)."""
import logging
import math

import pytest
import torch

import jepa_kernels
from jepa.config import load_config
from jepa.data import Batch
from jepa.optim import build_optimizer
from jepa.train import Trainer, main

from small_config import SMALL_BASE

# the default device, and TensorBoard on: the Fashion-MNIST run checks its event file
SMALL = {**SMALL_BASE, "model.embed_dim": "48", "model.pred_dim": "24", "data.batch_size": "32", "data.subset": "256",
         "optim.warmup_epochs": "0.5", "logging.log_every": "2", "training.device": "auto",
         "logging.tensorboard": "true", "logging.images_every_epochs": "0"}  # pictures: test_visualize.py


def small_cfg(**over):
    o = dict(SMALL)
    o.update(over)
    return load_config(None, o)


def test_loss_goes_down_on_fashion_mnist(tmp_path):
    cfg = small_cfg(**{"data.subset": "1024", "training.epochs": "6", "optim.lr": "2e-3",
                       "optim.start_lr": "1e-4", "data.random_crop": "false"})
    trainer = Trainer(cfg, run_dir=tmp_path)
    losses = []
    original = trainer.train_step

    def record(group):
        out = original(group)
        losses.append(out["loss"].item())
        return out
    trainer.train_step = record
    result = trainer.train()
    assert result["stopped"] == "completed" and result["step"] == 6 * 32
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "config.yaml").is_file()
    assert list((tmp_path / "tb").iterdir()), "no TensorBoard event file"
    assert list((tmp_path / "checkpoints").glob("ckpt_step*.pt"))


def test_step_order_ema_after_optimizer_and_target_untouched(tmp_path):
    cfg = small_cfg()
    trainer = Trainer(cfg, run_dir=tmp_path)
    batch = trainer.data.epoch(0).__next__()
    online_before = [p.detach().clone() for p in trainer.model.context_encoder.parameters()]
    target_before = [p.detach().clone() for p in trainer.model.target_encoder.parameters()]
    trainer.train_step([batch])
    m = trainer.schedules.momentum_at(1)
    assert trainer.step == 1 and m > cfg.optim.ema[0]
    for t0, o0, t1, o1 in zip(target_before, online_before, trainer.model.target_encoder.parameters(),
                              trainer.model.context_encoder.parameters()):
        # EMA used the online weights AFTER the optimizer step
        torch.testing.assert_close(t1, m * t0 + (1 - m) * o1.detach(), rtol=1e-6, atol=1e-7)
        assert t1.grad is None
    changed = sum(not torch.equal(a, b) for a, b in zip(online_before, trainer.model.context_encoder.parameters()))
    assert changed > 0
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in trainer.model.target_encoder.parameters())


def test_weight_decay_excludes_biases_and_norms():
    from jepa.models import build_model
    cfg = small_cfg()
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.optim)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = [names[id(p)] for p in opt.param_groups[0]["params"]]
    no_decay = [names[id(p)] for p in opt.param_groups[1]["params"]]
    assert opt.param_groups[0]["apply_wd"] and not opt.param_groups[1]["apply_wd"]
    assert all(not n.endswith(".bias") and "norm" not in n for n in decay)
    assert any(n.endswith("norm.weight") for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    assert "predictor.mask_token" in decay


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    cfg = small_cfg(**{"training.accum_steps": "2"})
    a = Trainer(cfg, run_dir=tmp_path / "a")
    b = Trainer(small_cfg(), run_dir=tmp_path / "b")
    b.model.load_state_dict(a.model.state_dict())
    torch.manual_seed(3)
    imgs = torch.randn(8, 1, 28, 28)
    ctx = torch.sort(torch.randperm(49)[:20])[0].repeat(1, 8, 1)
    tgt = torch.stack([torch.sort(torch.randperm(49)[:6])[0] for _ in range(4)])[:, None].repeat(1, 8, 1)
    tgt_rect = torch.tensor([0, 1, 2, 7, 8, 9])[None, None].repeat(4, 8, 1)
    whole = Batch(imgs, torch.zeros(8), ctx, tgt_rect, (2, 3))
    halves = [Batch(imgs[i:i + 4], torch.zeros(4), ctx[:, i:i + 4], tgt_rect[:, i:i + 4], (2, 3)) for i in (0, 4)]
    la = a.train_step(halves)["loss"]
    lb = b.train_step([whole])["loss"]
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)
    assert tgt.shape == tgt_rect.shape


def test_cli_runs_quick_validation_and_stop_at_step(tmp_path, capsys):
    code = main(["--config", "configs/quick_validation.yaml", "--run-dir", str(tmp_path),
                 "--training.stop_at_step", "3", "--data.subset", "512", "--logging.progress", "false"])
    assert code == 0
    out = capsys.readouterr().out
    assert "stop_at_step 3 at step 3" in out
    assert (tmp_path / "checkpoints" / "ckpt_step00000003.pt").is_file()


def test_bad_config_is_a_clean_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", "configs/quick_validation.yaml", "--masks.pred_scale", "[0.5, 0.2]"])
    assert e.value.code == 2 and "masks.pred_scale" in capsys.readouterr().err


def test_missing_dataset_names_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JEPA_DATA", raising=False)
    code = main(["--config", "configs/quick_validation.yaml", "--run-dir", str(tmp_path),
                 "--data.dataset", "cifar10", "--data.root", str(tmp_path / "nowhere"), "--data.channels", "3",
                 "--data.image_size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err


def test_nonfinite_loss_stops_without_overwriting_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg(**{"checkpoint.every_steps": "2", "logging.log_every": "1"})
    trainer = Trainer(cfg, run_dir=tmp_path)
    original = jepa_kernels.masked_target_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * math.nan if calls["n"] == 3 else loss
    monkeypatch.setattr(jepa_kernels, "masked_target_loss", poisoned)
    from jepa.errors import NonFiniteError
    with pytest.raises(NonFiniteError, match="step 3"):
        trainer.train()
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt_step*.pt"))
    assert saved == ["ckpt_step00000002.pt"]


@pytest.fixture
def restore_kernel_backend():
    yield
    jepa_kernels.set_backend("auto")


def test_triton_and_torch_kernels_give_the_same_loss_curve(tmp_path, restore_kernel_backend):
    """20 CPU steps with the Triton kernels (interpreter) track the PyTorch fallbacks."""
    curves = {}
    for backend in ("torch", "triton"):
        cfg = small_cfg(**{"training.kernels": backend, "model.embed_dim": "16", "model.pred_dim": "8",
                           "data.batch_size": "8", "data.subset": "160", "training.epochs": "1"})
        trainer = Trainer(cfg, run_dir=tmp_path / backend)
        losses = []
        for group in trainer.micro_batches():
            if group is None:
                break
            losses.append(trainer.train_step(group)["loss"].item())
        curves[backend] = torch.tensor(losses)
    assert len(curves["torch"]) == 20
    torch.testing.assert_close(curves["triton"], curves["torch"], rtol=1e-4, atol=1e-5)


def test_progress_line_in_a_log_file_shows_eta_and_prints_the_end_once():
    import io

    from jepa.monitoring.progress import Progress
    out = io.StringIO()
    bar = Progress(10, stream=out, every_s=0.0)
    for n in range(1, 11):
        bar.update(n)
        bar.set_postfix(loss=0.5, ips=100.0)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("step 10/10") and "loss 0.5" in lines[-1] and "<" in lines[-1]
    assert sum(line.startswith("step 10/10") for line in lines) == 1


@pytest.mark.parametrize("precision,forced,dtype,said", [
    ("auto", "1", torch.bfloat16, "precision: bf16 (auto: JEPA_CPU_BF16=1)"),
    ("auto", "0", torch.float32, "precision: fp32 (auto: CPU has no bf16 matrix instructions)"),
    ("fp32", "1", torch.float32, "precision: fp32,"),
    ("bf16", "0", torch.bfloat16, "precision: bf16,")])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_matrix_units(tmp_path, caplog, monkeypatch,
                                                                            precision, forced, dtype, said):
    """``auto`` follows the (forced) CPU probe and the start log says what it picked and why; an explicit
    precision is kept whatever the CPU."""
    monkeypatch.setenv("JEPA_CPU_BF16", forced)
    trainer = Trainer(small_cfg(**{"training.precision": precision, "training.device": "cpu"}), run_dir=tmp_path)
    assert trainer.amp_dtype == dtype
    with caplog.at_level(logging.INFO, logger="jepa"):
        trainer.announce()
    assert any(said in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_the_cpu_probe_reads_the_matrix_flags_unless_forced(monkeypatch):
    from jepa.cpu import cpu_bf16_matmul_flag
    from jepa.device import auto_precision
    amx = "flags : fpu avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert cpu_bf16_matmul_flag(amx) == "amx_bf16"
    assert cpu_bf16_matmul_flag("flags : fpu avx512f avx512_bf16\n") == "avx512_bf16"
    assert cpu_bf16_matmul_flag("flags : fpu avx2 avx512f\nbugs : avx512_bf16\n") is None
    monkeypatch.setenv("JEPA_CPU_BF16", "1")
    assert auto_precision(torch.device("cpu")) == ("bf16", "JEPA_CPU_BF16=1")
    monkeypatch.setenv("JEPA_CPU_BF16", "0")
    assert auto_precision(torch.device("cpu")) == ("fp32", "CPU has no bf16 matrix instructions")
    assert auto_precision(torch.device("cuda")) == ("bf16", "CUDA")
    assert auto_precision(torch.device("mps")) == ("fp32", "MPS")


def test_mask_statistics_count_batches_drawn_in_dataloader_workers(tmp_path):
    """The sampler runs in the workers; the statistics the trainer logs come with the batches it receives."""
    summaries = []
    for workers in (0, 2):
        trainer = Trainer(small_cfg(**{"data.num_workers": str(workers)}), run_dir=tmp_path / str(workers))
        stream = trainer.micro_batches()
        groups = [next(stream) for _ in range(3)]
        stats = trainer.mask_stats.summary()
        assert stats["batches"] == 3
        assert stats["context_tokens"] == sum(g[0].ctx_idx.shape[-1] for g in groups) / 3
        assert stats["target_tokens"] == sum(g[0].tgt_idx.shape[-1] for g in groups) / 3
        summaries.append(stats)
    assert summaries[0] == summaries[1]
