"""Hugging Face datasets (``data.dataset: hf``) from parquet files and save_to_disk folders the tests write:
map-style loading with per-image crops and exact resume, streaming over row groups (every sample once an epoch,
exact resume), training and ``python -m jepa.eval`` on them, and the one-line errors. Never the hub."""
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from jepa.config import ConfigError, load_config
from jepa.data import TrainBatches
from jepa.data.crops import FileCrops
from jepa.data.datasets import DatasetNotFoundError, HFOptions, load_dataset
from jepa.seeds import mix_seed
from jepa.train import Trainer

from data_formats import encoded_images, write_hf_parquet
from small_config import SMALL_BASE

ROOT = Path(__file__).resolve().parents[1]
BASE = {**SMALL_BASE, "data.dataset": "hf", "data.image_size": "16", "data.channels": "3", "data.batch_size": "4",
        "model.patch_size": "4", "data.shuffle_buffer": "5", "training.epochs": "2", "optim.warmup_epochs": "0.5",
        "logging.log_every": "1"}


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """The library's cache (where it converts parquet for map-style reading) in a temporary folder."""
    before = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = str(tmp_path_factory.mktemp("hf_cache"))
    yield datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = before


@pytest.fixture(scope="module")
def parquet_dir(hf_cache, tmp_path_factory):
    """48 training rows labelled 0..47 (so labels name the samples) in 2 files of 4 row groups of 6; 12 test rows."""
    out = tmp_path_factory.mktemp("parquet")
    images = encoded_images(60, seed=3)
    write_hf_parquet(out / "train-00000-of-00002.parquet", images[:24], list(range(24)))
    write_hf_parquet(out / "train-00001-of-00002.parquet", images[24:48], list(range(24, 48)))
    write_hf_parquet(out / "test-00000-of-00001.parquet", images[48:], list(range(12)))
    return out


@pytest.fixture(scope="module")
def saved_dir(hf_cache, tmp_path_factory):
    """A save_to_disk DatasetDict (train and validation, a ClassLabel of 3 classes)."""
    images = encoded_images(18, seed=4)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    rows = lambda part: {"image": [{"bytes": b, "path": None} for b in part], "label": [i % 3 for i in range(len(part))]}
    out = tmp_path_factory.mktemp("saved") / "ds"
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows(images[:12]), features=features),
                         validation=datasets.Dataset.from_dict(rows(images[12:]), features=features)).save_to_disk(out)
    return out


def cfg_for(path, **over):
    return load_config(None, {**BASE, "data.hf_path": str(path), **{k: str(v) for k, v in over.items()}})


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert torch.equal(x.ctx_idx, y.ctx_idx) and torch.equal(x.tgt_idx, y.tgt_idx)


# ---------------------------------------------------------------- map-style


def test_splits_load_from_a_split_glob_a_folder_of_files_and_a_saved_folder(parquet_dir, saved_dir):
    glob = HFOptions(str(parquet_dir / "{split}-*.parquet"))
    train = load_dataset("hf", "train", hf=glob, image_size=16)
    assert len(train) == 48 and train.labels.tolist() == list(range(48)) and train[5][0].shape == (3, 16, 16)
    assert len(load_dataset("hf", "test", hf=glob, image_size=16)) == 12
    folder = load_dataset("hf", "test", parquet_dir, image_size=16, channels=1)  # root replaces the path
    assert len(folder) == 12 and folder[0][0].shape == (1, 16, 16)
    saved = load_dataset("hf", "train", hf=HFOptions(str(saved_dir)), image_size=8, subset=5)
    assert len(saved) == 5 and saved.num_classes == 3 and saved.labels.tolist() == [0, 1, 2, 0, 1]
    assert len(load_dataset("hf", "test", hf=HFOptions(str(saved_dir)))) == 6  # test falls back to validation
    unlabelled = load_dataset("hf", "train", hf=HFOptions(str(saved_dir), label_column=None))
    assert unlabelled.labels.tolist() == [-1] * 12 and unlabelled.num_classes == 0


def test_map_style_batches_are_per_image_crops_the_same_with_workers_and_resume_exactly(parquet_dir):
    over = {"data.hf_path": str(parquet_dir / "{split}-*.parquet")}
    runs = {w: list(TrainBatches(cfg_for(parquet_dir, **over, **{"data.num_workers": w})).epoch(1)) for w in (0, 2)}
    same_batches(runs[0], runs[2])
    assert len(runs[0]) == 12 and runs[0][0].images.dtype == torch.uint8
    same_batches(runs[0][5:], list(TrainBatches(cfg_for(parquet_dir, **over)).epoch(1, start=5)))
    tb = TrainBatches(cfg_for(parquet_dir, **over))
    k = int(tb.order(1)[4 * 2 + 1])  # batch 2, slot 1
    source, name = tb.dataset.source(k)
    expected = tb.crops(source, name, mix_seed(tb.cfg.training.seed, "crop", 0, 1, 2, 1))
    assert isinstance(source, bytes) and torch.equal(runs[0][2].images[1], expected)
    assert isinstance(tb.crops, FileCrops)


def test_a_training_run_on_hf_data_is_evaluated_by_the_eval_command(parquet_dir, hf_cache, tmp_path, one_thread):
    cfg = cfg_for(parquet_dir, **{"training.stop_at_step": 3, "data.batch_size": 8})
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    assert trainer.train()["step"] == 3
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*.pt"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=hf_cache, OMP_NUM_THREADS="1")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "jepa.eval", "--checkpoint", str(checkpoint), "--protocol", "knn",
                           "--no-progress", "--device", "cpu", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dataset"] == "hf" and report["train_images"] == 48 and report["test_images"] == 12
    assert 0.0 <= report["results"]["pretrained"]["knn"] <= 1.0


# ---------------------------------------------------------------- streaming


def stream_cfg(parquet_dir, **over):
    return cfg_for(parquet_dir, **{"data.hf_streaming": "true", **over})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_reads_every_row_once_per_epoch_in_a_new_order(parquet_dir, workers):
    tb = TrainBatches(stream_cfg(parquet_dir, **{"data.num_workers": workers}))
    assert len(tb.dataset.counts) == 8 and tb.batches_per_epoch == 12
    orders = {e: [label for b in tb.epoch(e) for label in b.labels.tolist()] for e in (0, 1)}
    for order in orders.values():
        assert sorted(order) == list(range(48))
    assert orders[0] != orders[1]


def test_a_stream_resumes_at_any_batch_exactly(parquet_dir):
    tb = TrainBatches(stream_cfg(parquet_dir, **{"data.num_workers": 2}))
    full = list(tb.epoch(1))
    assert len(full) == tb.batches_per_epoch == 12
    for start in (1, 5, 11, 12):
        rest = list(tb.epoch(1, start=start))
        assert len(rest) == 12 - start
        same_batches(full[start:], rest)  # asserts images, labels and masks equal, batch by batch


def test_the_trainer_resumes_a_streamed_run_exactly(parquet_dir, tmp_path, one_thread):
    over = {"data.batch_size": 8, "checkpoint.every_epochs": 0, "model.depth": 1}
    full = Trainer(stream_cfg(parquet_dir, **over), run_dir=tmp_path / "full")
    assert full.train()["step"] == 12
    cut = Trainer(stream_cfg(parquet_dir, **over, **{"training.stop_at_step": 4}), run_dir=tmp_path / "cut")
    assert cut.train()["stopped"] == "stop_at_step 4"
    rest = Trainer(stream_cfg(parquet_dir, **over), run_dir=tmp_path / "cut", resume="auto")
    assert rest.step == 4 and rest.train()["step"] == 12
    for (name, p), q in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resuming the parquet stream"


def test_an_undecodable_row_is_replaced_and_named_once(hf_cache, tmp_path):
    images = encoded_images(24, seed=5)
    images[7] = b"not an image"
    path = write_hf_parquet(tmp_path / "bad" / "train-0.parquet", images, list(range(24)))
    for streaming in ("false", "true"):
        tb = TrainBatches(cfg_for(path.parent / "train-*.parquet", **{"data.hf_streaming": streaming}))
        batches = list(tb.epoch(0))
        assert sum(len(b.bad_images) for b in batches) == 1
        expected = "[row group 1, row 1]" if streaming == "true" else "split train[7]"
        assert list(tb.bad_images.seen) == [f"{path}{expected}" if streaming == "true" else
                                            f"{path.parent / 'train-*.parquet'} {expected}"]


# ---------------------------------------------------------------- errors


def test_a_missing_column_split_or_path_is_one_line_naming_the_key(parquet_dir, saved_dir):
    with pytest.raises(ConfigError, match=r"data.hf_image_column: no column 'img' .*its columns: image, label"):
        load_dataset("hf", "train", hf=HFOptions(str(saved_dir), image_column="img"))
    with pytest.raises(ConfigError, match=r"data.hf_image_column: no column 'img' .*its columns: image, label"):
        TrainBatches(stream_cfg(parquet_dir, **{"data.hf_image_column": "img"}))
    with pytest.raises(ConfigError, match=r"data.hf_label_column: no column 'cls'"):
        load_dataset("hf", "train", hf=HFOptions(str(saved_dir), label_column="cls"))
    with pytest.raises(ConfigError, match=r"data.hf_image_column: column 'label' .* not images"):
        TrainBatches(stream_cfg(parquet_dir, **{"data.hf_image_column": "label"}))
    with pytest.raises(DatasetNotFoundError, match=r"no split 'holdout'; its splits: train, validation"):
        load_dataset("hf", "holdout", hf=HFOptions(str(saved_dir)))
    with pytest.raises(DatasetNotFoundError, match=r"no split 'dev'; its splits: train, test"):
        TrainBatches(stream_cfg(parquet_dir, **{"data.hf_split": "dev"}))
    with pytest.raises(DatasetNotFoundError, match=r"neither a folder nor matches files"):
        load_dataset("hf", "train", hf=HFOptions(str(parquet_dir / "nothing" / "here")))
    with pytest.raises(DatasetNotFoundError, match=r"no files match .*nothing-\*.parquet"):
        load_dataset("hf", "train", hf=HFOptions(str(parquet_dir / "nothing-*.parquet")))
    with pytest.raises(DatasetNotFoundError, match=r"names the files of one split \(train\), not 'test'"):
        load_dataset("hf", "test", hf=HFOptions(str(parquet_dir / "train-*.parquet")))
    with pytest.raises(ConfigError, match=r"data.hf_streaming: .* is a save_to_disk folder"):
        TrainBatches(stream_cfg(saved_dir))
    with pytest.raises(ConfigError, match=r"data.hf_path names 8 shards but 1 process\(es\) x 9 loader worker"):
        TrainBatches(stream_cfg(parquet_dir, **{"data.num_workers": 9}))


def test_without_the_library_the_error_says_what_to_install(parquet_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'jepa-trainer\[hf\]'"):
        load_dataset("hf", "train", hf=HFOptions(str(parquet_dir)))


def test_the_core_does_not_import_the_library():
    code = "import jepa.train, jepa.eval, jepa.data, sys; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("over, key", [
    ({"data.dataset": "hf"}, "data.hf_path"),
    ({"data.hf_path": "x"}, "data.hf_path"),
    ({"data.dataset": "hf", "data.hf_path": "x", "data.hf_split": " "}, "data.hf_split"),
    ({"data.dataset": "hf", "data.hf_path": "x", "data.hf_streaming": "true", "eval.every_epochs": "1"},
     "eval.every_epochs"),
    ({"data.hf_streaming": "true"}, "data.hf_streaming"),
    ({"data.mix": '[{"name": "hf", "root": "x"}, {"name": "synthetic"}]', "data.hf_streaming": "true"},
     "data.hf_streaming"),
])
def test_hf_settings_are_checked_naming_the_key(over, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, over)
