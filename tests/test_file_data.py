"""Training batches from image files: per-image crops reproducible with any number of workers, exact resume,
mixtures with in-memory data, and the data.on_bad_image policy end to end."""
import logging
import re

import pytest
import torch

from jepa.config import ConfigError, load_config
from jepa.data import TrainBatches
from jepa.data.bad_images import BadImages, TooManyBadImagesError
from jepa.data.crops import FileCrops
from jepa.data.datasets import BadImageError
from jepa.seeds import mix_seed
from jepa.train import Trainer, main

from data_formats import write_varied_folder

FILES = {"data.dataset": "imagefolder", "data.image_size": "16", "data.channels": "3", "data.batch_size": "4",
         "model.patch_size": "4", "model.embed_dim": "32", "model.depth": "1", "model.num_heads": "2",
         "model.pred_dim": "16", "model.pred_depth": "1", "model.pred_heads": "2", "masks.min_keep": "4",
         "training.epochs": "2", "training.device": "cpu", "optim.warmup_epochs": "0.5",
         "logging.progress": "false", "logging.tensorboard": "false", "logging.log_every": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_varied_folder(tmp_path_factory.mktemp("folder"), classes=3, per_class=8)


def cfg_for(root, **over):
    return load_config(None, {**FILES, "data.root": str(root), **{k: str(v) for k, v in over.items()}})


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert torch.equal(x.ctx_idx, y.ctx_idx) and torch.equal(x.tgt_idx, y.tgt_idx)


def test_file_batches_are_the_same_with_any_number_of_workers_and_resume_exactly(folder):
    runs = {w: list(TrainBatches(cfg_for(folder, **{"data.num_workers": w})).epoch(1)) for w in (0, 2)}
    same_batches(runs[0], runs[2])
    assert len(runs[0]) == 6 and runs[0][0].images.dtype == torch.uint8 and runs[0][0].images.shape == (4, 3, 16, 16)
    tail = list(TrainBatches(cfg_for(folder, **{"data.num_workers": 2})).epoch(1, start=3))
    same_batches(runs[0][3:], tail)
    other = list(TrainBatches(cfg_for(folder)).epoch(0))
    assert not torch.equal(other[0].images, runs[0][0].images), "epochs gave the same views"


def test_each_view_is_its_files_crop_seeded_by_position_and_normalised_on_transfer(folder):
    tb = TrainBatches(cfg_for(folder))
    order = tb.order(1)
    batch = list(tb.epoch(1))[2]
    crops = FileCrops(16, 3, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 4 / 3))
    for j in range(4):
        path, _ = tb.dataset.samples[int(order[8 + j])]
        assert torch.equal(batch.images[j], crops(path, str(path), mix_seed(0, "crop", 0, 1, 2, j)))
        assert batch.labels[j] == tb.dataset.labels[order[8 + j]]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    moved = batch.to("cpu")
    expected = (batch.images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert moved.images.dtype == torch.float32 and moved.norm is None
    torch.testing.assert_close(moved.images, expected, rtol=1e-6, atol=1e-6)


def test_a_mixture_crops_its_file_part_and_augments_its_memory_part(folder):
    cfg = load_config(None, {**FILES, "data.mix": f"[{{name: imagefolder, root: {folder}}}, {{name: synthetic}}]",
                             "data.synthetic_size": "24", "data.num_workers": "0"})
    tb = TrainBatches(cfg)
    batches = list(tb.epoch(0))
    assert len(batches) == 12
    labels = torch.cat([b.labels for b in batches])
    assert (labels < 3).any() and (labels >= 3).any(), "one part never drawn"
    for b in batches:
        assert b.images.dtype == torch.float32 and b.norm is None and b.images.shape == (4, 3, 16, 16)
        assert torch.isfinite(b.images).all()


def test_bad_image_policy_skip_logs_each_file_once_then_stops_past_the_limit(caplog):
    policy = BadImages("skip", limit=2)
    with caplog.at_level(logging.WARNING, logger="jepa"):
        policy.check([("a.jpg", "empty file (0 bytes)")])
        policy.check([("a.jpg", "empty file (0 bytes)"), ("b.jpg", "truncated file")])
        policy.check([])
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == ["a.jpg: empty file (0 bytes)",
                                                                          "b.jpg: truncated file"]
    with pytest.raises(TooManyBadImagesError, match=r"3 image files.*max_bad_images=2") as info:
        policy.check([("c.png", "not an image")])
    assert all(name in str(info.value) for name in ("a.jpg", "b.jpg", "c.png"))
    with pytest.raises(BadImageError, match=r"(?s)x\.jpg: truncated.*on_bad_image is 'error'"):
        BadImages("error").check([("x.jpg", "truncated"), ("y.jpg", "empty")])


@pytest.fixture
def with_bad_files(tmp_path):
    root = write_varied_folder(tmp_path / "bad", classes=2, per_class=8, seed=3)
    (root / "train" / "c0" / "001.jpg").write_bytes(b"")
    (root / "train" / "c1" / "004.jpg").write_bytes(b"<html>not found</html>")
    return root


def test_training_skips_bad_files_and_logs_each_once(with_bad_files, tmp_path, caplog, one_thread):
    cfg = cfg_for(with_bad_files, **{"training.epochs": 2, "checkpoint.every_epochs": 0})
    with caplog.at_level(logging.WARNING, logger="jepa"):
        result = Trainer(cfg, run_dir=tmp_path / "run").train()
    assert result["stopped"] == "completed" and result["step"] == 8
    skipped = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(skipped) == 2 and "001.jpg: empty file" in skipped[0] + skipped[1]


def test_rankme_batch_and_pictures_pass_over_bad_files(with_bad_files, tmp_path, caplog, one_thread):
    from jepa.data.datasets import load_dataset
    from jepa.monitoring.collapse import decodable_images
    train = load_dataset("imagefolder", "train", str(with_bad_files), channels=3, image_size=16)
    order = torch.arange(len(train))
    images = decodable_images(train, order, 15)
    assert images.shape[0] == 14  # 16 files, 2 cannot be decoded
    good = [i for i in range(len(train)) if i not in (bad_index(train, "c0/001.jpg"), bad_index(train, "c1/004.jpg"))]
    assert torch.equal(images, train.get_batch(torch.tensor(good))[0])
    cfg = cfg_for(with_bad_files, **{"training.epochs": 1, "logging.tensorboard": "true",
                                     "logging.images_every_epochs": 1, "logging.rankme_batch": 12})
    with caplog.at_level(logging.INFO, logger="jepa"):
        trainer = Trainer(cfg, run_dir=tmp_path / "run")
        assert trainer.collapse.images.shape[0] == 12
        assert trainer.train()["stopped"] == "completed"


def bad_index(dataset, name: str) -> int:
    return next(i for i, s in enumerate(dataset.samples) if str(s[0]).endswith(name))


@pytest.mark.parametrize("policy,message", [
    ("error", r"(001|004)\.jpg: (empty file|not an image).*on_bad_image is 'error'"),
    ("skip", r"2 image files: cannot be decoded, more than data.max_bad_images=1")])
def test_the_cli_stops_on_bad_files_with_a_message_not_a_traceback(with_bad_files, tmp_path, capsys, policy, message,
                                                                 one_thread):
    args = [f"--{k}={v}" for k, v in {**FILES, "data.root": str(with_bad_files), "data.num_workers": "2",
                                      "data.on_bad_image": policy, "data.max_bad_images": "1"}.items()]
    assert main(args + ["--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    assert re.search(message, err, re.S), err


@pytest.mark.parametrize("over,key", [
    ({"data.on_bad_image": "ignore"}, "data.on_bad_image: must be one of error, skip"),
    ({"data.max_bad_images": "-1"}, "data.max_bad_images"),
    ({"data.shuffle_buffer": "0"}, "data.shuffle_buffer"),
    ({"data.dataset": "shards"}, "data.shards: is required"),
    ({"data.shards": "x/shard-000000.tar"}, "data.shards: is only read with data.dataset: shards"),
    ({"data.dataset": "shards", "data.shards": "x/s-{0..}.tar"}, "neither a range"),
    ({"data.dataset": "shards", "data.shards": "x/s-0.tar", "eval.every_epochs": "1"}, "eval.every_epochs"),
    ({"data.mix": "[{name: shards}]"}, "data.mix\\[0\\].name")])
def test_bad_file_and_shard_settings_are_clear_config_errors(over, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, over)
