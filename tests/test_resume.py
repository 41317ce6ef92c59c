"""Exact resume: a run cut mid-epoch and continued reaches bit-identical weights; SIGTERM; --resume auto/PATH."""
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jepa.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint
from jepa.config import load_config
from jepa.train import Trainer, main

from small_config import SMALL_BASE

ROOT = Path(__file__).resolve().parents[1]
# 256 images / batch 32 = 8 steps per epoch, 2 epochs = 16 steps
SMALL = {**SMALL_BASE, "data.batch_size": "32", "data.subset": "256", "training.epochs": "2",
         "optim.warmup_epochs": "0.5", "logging.log_every": "3", "checkpoint.keep_last": "3"}


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_with(**over):
    return load_config(None, {**SMALL, **over})


def assert_same_tensors(a, b, where=""):
    """Recursively compare nested dicts/lists of tensors and primitives for exact equality."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a} != {b}"


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    full = Trainer(cfg_with(), run_dir=tmp_path / "full")
    assert full.train()["step"] == 16

    first = Trainer(cfg_with(**{"training.stop_at_step": "5"}), run_dir=tmp_path / "cut")
    assert first.train()["stopped"] == "stop_at_step 5"
    state = load_checkpoint(checkpoint_path(tmp_path / "cut", 5))
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 5)
    assert first.total_steps == full.total_steps and first.schedules == full.schedules

    second = Trainer(cfg_with(**{"training.stop_at_step": "11"}), run_dir=tmp_path / "cut", resume="auto")
    assert second.step == 5
    assert second.train()["stopped"] == "stop_at_step 11"
    assert (second.epoch, second.batch_in_epoch) == (1, 3)

    third = Trainer(cfg_with(), run_dir=tmp_path / "cut", resume="auto")
    assert third.train()["stopped"] == "completed" and third.step == 16

    for (name, p), q in zip(full.model.state_dict().items(), third.model.state_dict().values()):
        assert torch.equal(p, q), f"parameter {name} differs after resume"
    assert_same_tensors(full.optimizer.state_dict(), third.optimizer.state_dict(), "optimizer")
    a = load_checkpoint(checkpoint_path(tmp_path / "full", 16))
    b = load_checkpoint(checkpoint_path(tmp_path / "cut", 16))
    # not "rng": creating a DataLoader iterator (once more after a resume) advances the global RNG, which no
    # part of a step uses; the equal weights above show it
    for key in ("model", "optimizer", "epoch", "batch_in_epoch", "epoch_loss", "best_metric", "schedule"):
        assert_same_tensors(a[key], b[key], key)


def test_resume_with_accumulation_is_bit_identical(tmp_path):
    over = {"training.accum_steps": "2", "training.epochs": "1"}
    full = Trainer(cfg_with(**over), run_dir=tmp_path / "full")
    full.train()
    Trainer(cfg_with(**over, **{"training.stop_at_step": "3"}), run_dir=tmp_path / "cut").train()
    resumed = Trainer(cfg_with(**over), run_dir=tmp_path / "cut", resume=str(checkpoint_path(tmp_path / "cut", 3)))
    assert resumed.batch_in_epoch == 6
    resumed.train()
    assert resumed.step == full.step == 4
    assert_same_tensors(full.model.state_dict(), resumed.model.state_dict(), "model")
    assert_same_tensors(full.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")


def test_stop_at_step_already_reached_does_no_step(tmp_path):
    Trainer(cfg_with(**{"training.stop_at_step": "2"}), run_dir=tmp_path).train()
    again = Trainer(cfg_with(**{"training.stop_at_step": "2"}), run_dir=tmp_path, resume="auto")
    assert again.train()["stopped"] == "stop_at_step 2 (already reached)" and again.step == 2
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_step00000002.pt"]


def test_resume_auto_uses_newest_valid_and_names_the_skipped_one(tmp_path, caplog):
    Trainer(cfg_with(**{"training.stop_at_step": "3", "checkpoint.every_steps": "1"}), run_dir=tmp_path).train()
    newest = checkpoint_path(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="jepa"):
        trainer = Trainer(cfg_with(), run_dir=tmp_path, resume="auto")
    assert trainer.step == 2
    assert "ckpt_step00000003.pt" in caplog.text and "skipping unusable checkpoint" in caplog.text
    # the broken file is kept aside, so it is neither picked again nor pruned as "newest"
    assert not newest.exists() and (tmp_path / "checkpoints" / "superseded" / newest.name).is_file()


def test_resume_from_older_path_sets_newer_checkpoints_aside(tmp_path):
    Trainer(cfg_with(**{"training.stop_at_step": "4", "checkpoint.every_steps": "1"}), run_dir=tmp_path).train()
    trainer = Trainer(cfg_with(), run_dir=tmp_path, resume=str(checkpoint_path(tmp_path, 2)))
    assert trainer.step == 2
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_step00000002.pt"]  # keep_last 3: 2, 3, 4
    aside = sorted(p.name for p in (tmp_path / "checkpoints" / "superseded").iterdir())
    assert aside == ["ckpt_step00000003.pt", "ckpt_step00000004.pt"]


def test_fresh_start_refuses_a_run_dir_with_checkpoints(tmp_path):
    Trainer(cfg_with(**{"training.stop_at_step": "1"}), run_dir=tmp_path).train()
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--resume auto"):
        Trainer(cfg_with(), run_dir=tmp_path)


def test_resume_with_a_different_model_is_refused(tmp_path):
    Trainer(cfg_with(**{"training.stop_at_step": "1"}), run_dir=tmp_path).train()
    with pytest.raises(CheckpointError, match="model.depth"):
        Trainer(cfg_with(**{"model.depth": "3"}), run_dir=tmp_path, resume="auto")


def test_cli_resume_from_corrupt_path_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    code = main(["--config", "configs/quick_validation.yaml", "--run-dir", str(tmp_path / "run"),
                 "--resume", str(bad), "--logging.progress", "false"])
    assert code == 2 and str(bad) in capsys.readouterr().err


def test_sigterm_finishes_the_step_saves_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jepa.train", "--config", "configs/quick_validation.yaml", "--run-dir", str(run),
           "--data.subset", "256", "--data.batch_size", "32", "--training.epochs", "200",
           "--checkpoint.every_steps", "1", "--checkpoint.keep_last", "2", "--logging.progress", "false",
           "--logging.tensorboard", "false", "--training.device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not list_checkpoints(run) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    step = int(re.search(r"done: signal at step (\d+)", out).group(1))
    assert 1 <= step < 200 * 8
    assert list_checkpoints(run)[0] == checkpoint_path(run, step)
    assert load_checkpoint(checkpoint_path(run, step))["step"] == step
    hint = re.search(r"Resume with:\n\s+(.+)", err).group(1)
    argv = shlex.split(hint)
    assert argv[:3] == ["python", "-m", "jepa.train"] and "--resume" in argv
    # the printed command really continues the run (one more step, then stop)
    assert main(argv[3:] + ["--training.stop_at_step", str(step + 1), "--logging.progress", "false"]) == 0
    assert load_checkpoint(list_checkpoints(run)[0])["step"] == step + 1


def test_sigint_in_process_stops_after_the_current_step_and_restores_handlers(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)
    trainer = Trainer(cfg_with(), run_dir=tmp_path)
    original = trainer.train_step

    def step_then_signal(group):
        out = original(group)
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    trainer.train_step = step_then_signal
    result = trainer.train()
    assert result["stopped"] == "signal" and result["step"] == 3
    assert list_checkpoints(tmp_path)[0] == checkpoint_path(tmp_path, 3)
    assert "--resume auto" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_on_the_last_step_then_resume_finishes_the_epoch_like_an_uninterrupted_run(tmp_path):
    full = Trainer(cfg_with(**{"training.epochs": "1"}), run_dir=tmp_path / "full")
    full.train()
    Trainer(cfg_with(**{"training.epochs": "1", "training.stop_at_step": "8"}), run_dir=tmp_path / "cut").train()
    assert not (tmp_path / "cut" / "checkpoints" / "best.pt").exists()
    resumed = Trainer(cfg_with(**{"training.epochs": "1"}), run_dir=tmp_path / "cut", resume="auto")
    assert resumed.train()["stopped"] == "completed" and resumed.epoch == 1
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "best.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "best.pt")
    assert a["step"] == b["step"] == 8 and math.isfinite(a["best_metric"])
    assert a["best_metric"] == b["best_metric"], "the epoch loss must survive the interruption"
