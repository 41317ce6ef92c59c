"""Every user error is one line and exit 2; damaged checkpoints are caught; nothing is overwritten; non-finite
state stops the run; a second signal still exits cleanly."""
import errno
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import jepa_kernels
from jepa import cli
from jepa.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, with_checksum
from jepa.config import load_config
from jepa.errors import DeviceError, NonFiniteError
from jepa.eval import main as eval_main
from jepa.export import main as export_main
from jepa.finetune import main as finetune_main
from jepa.visualize import main as visualize_main
from jepa.train import Trainer
from jepa.train import main as train_main
from small_config import SMALL_BASE

ROOT = Path(__file__).resolve().parents[1]
SMALL = {**SMALL_BASE, "data.batch_size": "32", "data.subset": "128", "logging.log_every": "1",
         "checkpoint.every_steps": "1", "checkpoint.keep_last": "5"}
pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_with(**over):
    return load_config(None, {**SMALL, **over})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run stopped after step 3, with a checkpoint at every step."""
    run_dir = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    Trainer(cfg_with(**{"training.stop_at_step": "3"}), run_dir=run_dir).train()
    torch.set_num_threads(threads)
    return run_dir


def exit_code(main, argv) -> int:
    """What the command exits with (argparse and config errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def one_error_line(err: str) -> str:
    """The ``error:`` line of ``err``, after checking the output is a message and not a traceback."""
    lines = [line for line in err.strip().splitlines() if not line[:2].isdigit()]  # drop timestamped log lines
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------ the error boundary


@pytest.mark.parametrize("argv, words", [
    (["--config", "configs/nope.yaml"], "config file not found"),
    (["--config", "configs/quick_validation.yaml", "--data.root", "/nowhere", "--data.dataset", "cifar10",
      "--data.channels", "3", "--data.image_size", "32"], "/nowhere"),
    (["--config", "configs/quick_validation.yaml", "--training.device", "cuda"], "CUDA is not available"),
])
def test_train_errors_are_one_line_and_exit_2(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JEPA_DATA", raising=False)
    code = exit_code(train_main, argv + ["--run-dir", str(tmp_path / "r"), "--logging.progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and words in one_error_line(err)


@pytest.mark.parametrize("module, argv, words", [
    ("train", ["--resume"], "argument --resume: expected one argument"),
    ("eval", ["--checkpoint", "x.pt", "--protocol", "nope"], "argument --protocol: invalid choice: 'nope'"),
    ("export", ["--checkpoint", "x.pt"], "the following arguments are required: --out"),
    ("finetune", ["--checkpoint", "x.pt", "--shots", "2", "--fraction", "0.1"], "not allowed with argument"),
    ("visualize", ["--checkpoint", "x.pt", "--images", "many"], "argument --images: invalid int value: 'many'"),
    ("shards", ["--src", "a"], "the following arguments are required: --out"),
])
def test_usage_errors_of_every_cli_are_one_line_and_a_help_pointer(module, argv, words, capsys):
    code = exit_code(importlib.import_module(f"jepa.{module}").main, argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith("error: ")
    assert lines[1] == f"  see python -m jepa.{module} --help"
    assert words in err and "usage:" not in err


def test_help_still_prints_the_usage(capsys):
    from jepa.shards import main as shards_main
    assert exit_code(shards_main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m jepa.shards") and "--force" in out


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    code = train_main(["--config", "configs/quick_validation.yaml", "--run-dir", str(taken / "sub"),
                       "--data.subset", "128", "--logging.progress", "false"])
    assert code == 2 and "taken" in one_error_line(capsys.readouterr().err)


def test_triton_kernels_without_cuda_name_the_config_key(monkeypatch):
    from jepa import device
    monkeypatch.setattr(device, "interpreting", lambda: False)
    with pytest.raises(DeviceError, match="training.kernels=triton"):
        device.check_kernels("triton", torch.device("cpu"))


@pytest.mark.parametrize("extra, words", [(["--device", "bogus"], "--device"), (["--dataset", "nope"], "nope"),
                                          (["--test-split", "nope"], "nope")])
def test_eval_errors_are_one_line_and_exit_2(run, extra, words, capsys):
    code = eval_main(["--checkpoint", str(checkpoint_path(run, 3)), "--no-progress", "--no-cache"] + extra)
    assert code == 2 and words in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("main, extra, words", [
    (finetune_main, ["--dataset", "nope"], "nope"),
    (finetune_main, ["--finetune.lr", "-1"], "finetune.lr"),
    (finetune_main, ["--model.depth", "3"], "model.depth"),
    (visualize_main, ["--dataset", "nope"], "nope"),
    (visualize_main, ["--device", "bogus"], "--device"),
    (eval_main, ["--probe.sgd_momentum", "1.5", "--protocol", "linear-sgd"], "probe.sgd_momentum"),
])
def test_finetune_visualize_and_probe_errors_are_one_line_and_exit_2(run, main, extra, words, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoint_path(run, 3))] + extra
    if main is not visualize_main:
        argv += ["--no-progress", "--no-cache"] if main is eval_main else ["--run-dir", str(tmp_path / "ft")]
    else:
        argv += ["--out", str(tmp_path / "pics")]
    code = main(argv)
    assert code == 2 and words in one_error_line(capsys.readouterr().err)


def test_a_full_disk_names_the_directory_and_the_bytes(run, tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "enc.safetensors"
    code = export_main(["--checkpoint", str(checkpoint_path(run, 3)), "--out", str(out)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "no space left" in line and str(tmp_path) in line and "MB" in line
    assert not out.exists() and os.listdir(tmp_path) == [], "a partial file was left"


def test_bugs_keep_their_traceback_and_jepa_debug_shows_everything(monkeypatch):
    def bug(argv):
        raise KeyError("a bug")
    with pytest.raises(KeyError):
        cli.run(bug, [])

    def user_error(argv):
        raise CheckpointError("bad file")
    assert cli.run(user_error, []) == 2
    monkeypatch.setenv("JEPA_DEBUG", "1")
    with pytest.raises(CheckpointError):
        cli.run(user_error, [])


# ------------------------------------------------------------------ no silent overwrite


def test_outputs_never_replace_inputs_or_checkpoints_and_need_force_otherwise(run, tmp_path, capsys):
    ckpt = checkpoint_path(run, 3)
    best = run / "checkpoints" / "best.pt"
    if not best.exists():
        os.link(checkpoint_path(run, 2), best)  # as a training run links it
    before = ckpt.read_bytes()
    for main, extra in ((export_main, []), (eval_main, ["--no-progress", "--no-cache", "--protocol", "knn"])):
        assert main(["--checkpoint", str(ckpt), "--out", str(ckpt), "--force"] + extra) == 2
        assert "is the input" in one_error_line(capsys.readouterr().err)
        assert main(["--checkpoint", str(ckpt), "--out", str(checkpoint_path(run, 2)), "--force"] + extra) == 2
        assert "training checkpoint" in one_error_line(capsys.readouterr().err)
        assert main(["--checkpoint", str(ckpt), "--out", str(run / "checkpoints" / "best.pt"), "--force"] + extra) == 2
        capsys.readouterr()
    assert ckpt.read_bytes() == before
    other = tmp_path / "existing.safetensors"
    other.write_text("keep me")
    assert export_main(["--checkpoint", str(ckpt), "--out", str(other)]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err) and other.read_text() == "keep me"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(other), "--force"]) == 0
    assert other.read_bytes() != b"keep me" and other.stat().st_size > 100
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    assert export_main(["--checkpoint", str(ckpt), "--out", str(folder)]) == 2
    assert "is a directory" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ checkpoint integrity


def flip_a_weight_byte(path: Path, state: dict):
    """Flip one byte inside the stored bytes of the largest weight tensor (not in the zip or pickle structure)."""
    name, tensor = max(state["model"].items(), key=lambda kv: kv[1].numel())
    raw = tensor.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(raw[:256])
    assert at >= 0, "tensor bytes not found in the file"
    data[at + 100] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_fails_the_checksum(run, tmp_path):
    path = tmp_path / "copy.pt"
    path.write_bytes(checkpoint_path(run, 3).read_bytes())
    flip_a_weight_byte(path, load_checkpoint(path))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        from jepa.export import load_encoder
        load_encoder(path)


def test_a_flipped_byte_in_an_export_fails_its_checksum(run, tmp_path):
    from jepa.export import load_encoder
    out = tmp_path / "enc.safetensors"
    assert export_main(["--checkpoint", str(checkpoint_path(run, 3)), "--out", str(out)]) == 0
    data = bytearray(out.read_bytes())
    data[-200] ^= 0x40  # the end of a safetensors file is tensor data
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_encoder(out)


def test_resume_auto_skips_damaged_and_invalid_checkpoints(run, tmp_path, caplog):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    flip_a_weight_byte(checkpoint_path(copy, 3), load_checkpoint(checkpoint_path(copy, 3)))
    state = load_checkpoint(checkpoint_path(copy, 2))
    del state["rng"]
    torch.save(with_checksum(state), checkpoint_path(copy, 2))  # intact, but without the RNG state
    with caplog.at_level("WARNING", logger="jepa"):
        trainer = Trainer(cfg_with(), run_dir=copy, resume="auto")
    assert trainer.step == 1
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "ckpt_step00000003.pt" in warnings and "checksum" in warnings
    assert "ckpt_step00000002.pt" in warnings and "RNG" in warnings


@pytest.mark.parametrize("damage, words", [
    (lambda s: s.update(step="3"), "not a count"),
    (lambda s: s["model"].update({next(iter(s["model"])): torch.zeros(2, 2)}), "wrong shapes"),
    (lambda s: s["model"].pop(next(iter(s["model"]))), "missing weights"),
    (lambda s: s.update(optimizer={"state": {}}), "optimizer"),
])
def test_a_resume_from_an_invalid_checkpoint_says_what_is_wrong(run, tmp_path, damage, words):
    state = load_checkpoint(checkpoint_path(run, 3))
    damage(state)
    bad = tmp_path / "bad.pt"
    torch.save(with_checksum(state), bad)
    with pytest.raises(CheckpointError, match=words):
        Trainer(cfg_with(), run_dir=tmp_path / "new", resume=str(bad))


# ------------------------------------------------------------------ non-finite state


def test_non_finite_gradients_or_optimizer_state_stop_the_run_and_keep_the_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(cfg_with(), run_dir=tmp_path)
    original = jepa_kernels.masked_target_loss

    def huge(*args, **kwargs):  # a finite loss whose gradients overflow from step 3 on
        loss = original(*args, **kwargs)
        return loss * 1e38 if trainer.step >= 2 else loss
    monkeypatch.setattr(jepa_kernels, "masked_target_loss", huge)
    with pytest.raises(NonFiniteError, match="(gradients|optimizer state).*step 3"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt_step*.pt")) == \
        ["ckpt_step00000001.pt", "ckpt_step00000002.pt"]


def test_the_optimizer_state_is_checked_on_its_own(tmp_path):
    trainer = Trainer(cfg_with(), run_dir=tmp_path)
    trainer.train_step([next(trainer.data.epoch(0))])
    trainer.check_finite()
    next(iter(trainer.optimizer.state.values()))["exp_avg_sq"][0] = float("inf")
    with pytest.raises(NonFiniteError, match="the optimizer state"):
        trainer.check_finite()


# ------------------------------------------------------------------ signals


def test_a_second_sigterm_during_shutdown_exits_cleanly(tmp_path):
    cmd = [sys.executable, "-m", "jepa.train", "--config", "configs/quick_validation.yaml", "--run-dir",
           str(tmp_path / "r"), "--logging.progress", "false", "--training.epochs", "50", "--data.batch_size", "512"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:
        if "steps (" in line or time.time() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    for line in proc.stderr:  # the first is handled (a step of batch 512 takes a while): send the second
        if "SIGTERM received" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "second SIGTERM" in err and "interrupted" in err
