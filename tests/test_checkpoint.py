"""Checkpoint files: atomic writes that survive a crash, clear errors for broken files, retention of last N + best."""
import os
import pickle
import random

import pytest
import torch

from jepa.checkpoint import (ENCODER_FORMAT, FORMAT, CheckpointError, checkpoint_path, find_latest_valid,
                             list_checkpoints, load_checkpoint, prune)
from jepa.config import load_config
from jepa.io import atomic_save
from jepa.train import Trainer

from small_config import SMALL_BASE

SMALL = {**SMALL_BASE, "model.depth": "1", "data.batch_size": "32", "data.subset": "128"}


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_state(step: int) -> dict:
    return {"format": FORMAT, "model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "step": step,
            "epoch": 0, "batch_in_epoch": step, "config": {}}


class NotATensor:
    pass


def test_crash_between_write_and_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, 7)
    atomic_save(fake_state(1), path)

    def crash(src, dst):
        raise OSError("simulated crash before rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_save(fake_state(2), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((3,), 1.0))
    assert os.listdir(path.parent) == [path.name], "a temp file was left behind"


def test_interrupt_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, 7)
    atomic_save(fake_state(1), path)
    real_save = torch.save

    def half_written(obj, f):
        real_save(obj, f)
        f.truncate(100)
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(fake_state(2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(path.parent) == [path.name]


def test_prune_removes_temp_files_left_by_a_hard_kill_but_not_others(tmp_path):
    folder = tmp_path / "checkpoints"
    atomic_save(fake_state(1), checkpoint_path(tmp_path, 1))
    stale = folder / ".ckpt_step00000002.pt.k3j2.tmp"
    stale.write_bytes(b"partial")
    other = folder / ".ckpt_step00000001.eval.fashion_mnist.json.x1.tmp"
    other.write_text("{")
    prune(tmp_path, keep_last=2)
    assert not stale.exists() and other.exists()
    assert checkpoint_path(tmp_path, 1).is_file()


def _write_truncated(path):
    atomic_save(fake_state(3), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    "truncated": (_write_truncated, "corrupt or truncated"),
    "empty": (lambda p: p.write_bytes(b""), "corrupt or truncated"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(300)), "corrupt or truncated"),
    "pickled object, raw stream": (lambda p: p.write_bytes(pickle.dumps(NotATensor())),
                                   "holds pickled Python objects: refused"),
    "pickled object": (lambda p: torch.save({"format": FORMAT, "x": NotATensor()}, p),
                       "holds pickled Python objects: refused"),
    "foreign state dict": (lambda p: torch.save(torch.nn.Linear(2, 2).state_dict(), p), "not a jepa checkpoint"),
    "plain pickle": (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "corrupt or truncated"),
    "exported encoder": (lambda p: torch.save({"format": ENCODER_FORMAT, "weights": {}}, p), "exported encoder"),
    "missing keys": (lambda p: torch.save({"format": FORMAT, "model": {}}, p), "missing optimizer"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_file_gives_clear_error_naming_it(tmp_path, kind):
    make, phrase = BROKEN[kind]
    path = tmp_path / "checkpoints" / "ckpt_step00000003.pt"
    path.parent.mkdir()
    make(path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and phrase in str(e.value)
    assert len(str(e.value)) < 600, "the message should be short enough to read"


def test_missing_file_and_directory_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


def test_find_latest_valid_skips_and_names_broken_newest(tmp_path):
    for step in (1, 2, 10):
        atomic_save(fake_state(step), checkpoint_path(tmp_path, step))
    _write_truncated(checkpoint_path(tmp_path, 10))
    warnings = []
    path, state = find_latest_valid(tmp_path, warn=warnings.append)
    assert path == checkpoint_path(tmp_path, 2) and state["step"] == 2
    assert len(warnings) == 1 and "ckpt_step00000010.pt" in warnings[0]
    assert find_latest_valid(tmp_path / "empty_run", warn=warnings.append) == (None, None)


def test_keep_last_and_best_retention(tmp_path):
    cfg = load_config(None, {**SMALL, "checkpoint.keep_last": "2"})
    trainer = Trainer(cfg, run_dir=tmp_path)
    for step, metric in zip(range(1, 6), [3.0, 1.0, 2.0, None, 5.0]):
        trainer.step = step
        trainer.save_checkpoint(metric=metric)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_step00000005.pt", "ckpt_step00000004.pt"]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 2 and best["best_metric"] == 1.0
    # the newest checkpoint knows the best so far, so a resumed run does not replace best.pt with a worse one
    assert load_checkpoint(checkpoint_path(tmp_path, 5))["best_metric"] == 1.0
    resumed = Trainer(cfg, run_dir=tmp_path, resume="auto")
    assert resumed.step == 5 and resumed.best_metric == 1.0
    resumed.step = 6
    resumed.save_checkpoint(metric=1.5)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 2
    resumed.step = 7
    resumed.save_checkpoint(metric=0.5)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 7
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.pt", "ckpt_step00000006.pt", "ckpt_step00000007.pt"]


def test_checkpoint_loads_with_weights_only_and_holds_the_run_state(tmp_path):
    cfg = load_config(None, {**SMALL, "training.stop_at_step": "2"})
    trainer = Trainer(cfg, run_dir=tmp_path)
    trainer.train()
    state = torch.load(checkpoint_path(tmp_path, 2), weights_only=True)
    assert state["format"] == FORMAT and state["step"] == 2 and state["epoch"] == 0 and state["batch_in_epoch"] == 2
    prefixes = {k.split(".")[0] for k in state["model"]}
    assert {"context_encoder", "predictor", "target_encoder"} <= prefixes
    assert state["optimizer"]["state"] and isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["config"]["model"]["embed_dim"] == 32 and state["data_stream"]["seed"] == cfg.training.seed
    assert state["schedule"]["lr"] == trainer.schedules.lr_at(2)
    assert "scaler" in state and state["skipped_steps"] == 0


def test_garbage_is_called_corrupt_even_where_it_begins_like_pickle_opcodes(tmp_path):
    path = tmp_path / "ckpt_step00000003.pt"
    for seed in range(300):  # about 2 % of these once read as "pickled objects" (a stray OBJ/REDUCE byte)
        path.write_bytes(random.Random(seed).randbytes(300))
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_checkpoint(path)
