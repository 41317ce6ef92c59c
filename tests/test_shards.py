"""Tar shards: ``python -m jepa.shards`` writes them atomically in the WebDataset layout; ``data.dataset: shards``
streams them with disjoint readers, a shuffle buffer, epochs from the index and exact resume."""
import io
import json
import random
import tarfile
from pathlib import Path

import logging

import pytest
import torch

from jepa import shards as shards_cli
from jepa.config import ConfigError, load_config
from jepa.data import TrainBatches
from jepa.data import shard_writer as writer
from jepa.data.datasets import DatasetFormatError, DatasetNotFoundError
from jepa.data.shard_plan import ShardPlan, assign_shards, buffer_order
from jepa.data.shard_reader import expand_braces, load_shards, shard_file_name
from jepa.train import Trainer

from data_formats import write_varied_folder

BASE = {"data.dataset": "shards", "data.image_size": "16", "data.channels": "3", "data.batch_size": "4",
        "data.shuffle_buffer": "5", "model.patch_size": "4", "model.embed_dim": "32", "model.depth": "1",
        "model.num_heads": "2", "model.pred_dim": "16", "model.pred_depth": "1", "model.pred_heads": "2",
        "masks.min_keep": "4", "training.epochs": "2", "training.device": "cpu", "optim.warmup_epochs": "0.5",
        "logging.progress": "false", "logging.tensorboard": "false", "logging.log_every": "1"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """48 images: 6 classes of 8 (one class per image would need more folders than tests need)."""
    return write_varied_folder(tmp_path_factory.mktemp("src"), classes=6, per_class=8, seed=1) / "train"


@pytest.fixture(scope="module")
def shard_dir(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    writer.write_shards(source, out, num_shards=8)
    return out


def pattern(shard_dir, n=8):
    return str(shard_dir / f"shard-{{000000..{n - 1:06d}}}.tar")


def cfg_for(shard_dir, **over):
    return load_config(None, {**BASE, "data.shards": pattern(shard_dir), **{k: str(v) for k, v in over.items()}})


def members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


# ---------------------------------------------------------------- writing


def test_writer_lays_out_every_image_once_with_its_label_and_an_index(source, shard_dir):
    index = json.loads((shard_dir / "index.json").read_text())
    assert index["samples"] == 48 and index["classes"] == [f"c{k}" for k in range(6)]
    assert [s["name"] for s in index["shards"]] == [f"shard-{k:06d}.tar" for k in range(8)]
    assert [s["samples"] for s in index["shards"]] == [6] * 8
    originals = {p.read_bytes(): int(p.parent.name[1:]) for p in source.rglob("*.jpg")}
    seen = []
    for entry in index["shards"]:
        path = shard_dir / entry["name"]
        assert path.stat().st_size == entry["bytes"]
        items = members(path)
        assert len(items) == 12
        for (img_name, data), (cls_name, label) in zip(items[::2], items[1::2]):
            key = img_name.split(".")[0]
            assert img_name == f"{key}.jpg" and cls_name == f"{key}.cls"
            assert originals[data] == int(label.decode())
            seen.append(data)
        assert len({originals[d] for d, in [(x,) for _, x in items[::2]]}) > 1, "a shard holds a single class"
    assert sorted(seen) == sorted(originals)


def test_rerun_rewrites_atomically_removes_stale_shards_and_writes_the_index_last(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    writer.write_shards(source, out, num_shards=8)
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    original = writer.write_shard
    calls = {"n": 0}

    def dies_on_the_third(path, samples, bar):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(path, samples, bar)
    monkeypatch.setattr(writer, "write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        writer.write_shards(source, out, num_shards=8, seed=7, force=True)
    assert not (out / "index.json").exists(), "an interrupted re-run left the old index beside new shards"
    assert sorted(p.name for p in out.iterdir()) == sorted(before), "a temp file or half shard was left"
    for name, data in before.items():  # every shard is complete: old or new, never half-written
        assert len(members(out / name)) == 12
    with pytest.raises(DatasetNotFoundError, match="no shard index"):
        load_shards(pattern(out), None, 3, 16)
    monkeypatch.setattr(writer, "write_shard", original)
    writer.write_shards(source, out, num_shards=3, force=True)
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [f"shard-{k:06d}.tar" for k in range(3)]
    assert [s["samples"] for s in json.loads((out / "index.json").read_text())["shards"]] == [16, 16, 16]


def test_writer_splits_by_size_and_the_cli_reports(source, tmp_path, capsys):
    total = sum(writer.tar_bytes(p.stat().st_size) for p in source.rglob("*.jpg"))
    assert shards_cli.main(["--src", str(source), "--out", str(tmp_path / "o"), "--shard-size", str(total // 4 + 1),
                            "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "48 images of 6 classes into 4 shards" in out and "shard-{000000..000003}.tar" in out
    assert shards_cli.main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert shards_cli.main(["--src", str(source), "--out", str(tmp_path / "o3"), "--shard-size", "1 XB"]) == 2
    assert "expected a positive size like 1GB" in capsys.readouterr().err


def test_shards_already_in_out_stop_the_command_before_it_writes_unless_force(source, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--src", str(source), "--out", str(out), "--no-progress"]
    assert shards_cli.main(args + ["--num-shards", "10"]) == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert shards_cli.main(args + ["--num-shards", "3", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "index.json, shard-000000.tar … shard-000009.tar (10 shards)" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "a refused run changed the folder"
    assert shards_cli.main(args + ["--num-shards", "3", "--seed", "5", "--force"]) == 0
    said = capsys.readouterr().out
    assert "replacing index.json, shard-000000.tar … shard-000002.tar (3 shards)" in said
    assert "removing shard-000003.tar … shard-000009.tar (7 shards)" in said
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "notes.txt"] + [f"shard-{k:06d}.tar" for k in range(3)]
    assert (out / "notes.txt").read_text() == "mine"


def test_name_files_gives_runs_of_shards_as_ranges():
    names = ["index.json"] + [f"shard-{k:06d}.tar" for k in (0, 1, 2, 5, 7, 8)]
    assert writer.name_files(names) == ("index.json, shard-000000.tar … shard-000002.tar (3 shards), "
                                        "shard-000005.tar, shard-000007.tar … shard-000008.tar (2 shards)")


@pytest.mark.parametrize("inside", ["", "c0", "new/deeper"])
def test_out_in_or_inside_src_is_refused_naming_both(source, inside, capsys):
    out = source / inside if inside else source
    before = sorted(p for p in source.rglob("*"))
    assert shards_cli.main(["--src", str(source), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and f"--src {source}" in err and "outside" in err
    assert sorted(p for p in source.rglob("*")) == before


def test_more_shards_than_images_is_refused(source, tmp_path, capsys):
    assert shards_cli.main(["--src", str(source), "--out", str(tmp_path / "o"), "--num-shards", "49"]) == 2
    err = capsys.readouterr().err
    assert "--num-shards 49" in err and "only 48 images" in err and "48 or fewer" in err
    assert not (tmp_path / "o").exists()
    assert shards_cli.main(["--src", str(source), "--out", str(tmp_path / "o"), "--num-shards", "48",
                            "--no-progress"]) == 0
    assert "into 48 shards" in capsys.readouterr().out


def test_the_bar_the_caller_makes_follows_every_image_and_the_cli_draws_one(source, tmp_path, capsys):
    totals, seen = [], []

    class Bar:
        n = 0

        def update(self, n):
            self.n = n
            seen.append(n)

        def close(self):
            seen.append("closed")
    writer.write_shards(source, tmp_path / "a", num_shards=3, progress=lambda total: totals.append(total) or Bar())
    assert totals == [48] and seen == list(range(1, 49)) + ["closed"]
    writer.write_shards(source, tmp_path / "b", num_shards=3)
    assert capsys.readouterr().err == "", "a write without a bar printed one"
    assert shards_cli.main(["--src", str(source), "--out", str(tmp_path / "c"), "--num-shards", "3"]) == 0
    assert "image 48/48" in capsys.readouterr().err


@pytest.mark.parametrize("text,size", [("1GB", 10**9), ("512MiB", 2**29), ("1.5g", 1_500_000_000), ("100", 100)])
def test_parse_size(text, size):
    assert shards_cli.parse_size(text) == size


# ---------------------------------------------------------------- naming shards


def test_brace_patterns_and_pipe_commands():
    assert expand_braces("d/s-{008..011}.tar") == [f"d/s-{k:03d}.tar" for k in range(8, 12)]
    assert expand_braces("{a,b}/x-{1..2}.tar") == ["a/x-1.tar", "a/x-2.tar", "b/x-1.tar", "b/x-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for bad in ("s-{3..1}.tar", "s-{1..2.tar", "s-{x}.tar"):
        with pytest.raises(ConfigError, match="data.shards"):
            expand_braces(bad)
    assert shard_file_name("pipe:aws s3 cp s3://b/in1k/shard-000003.tar -") == "shard-000003.tar"
    assert shard_file_name("/mnt/bucket/shard-000003.tar") == "shard-000003.tar"


def test_index_lookup_and_mismatches_are_clear_errors(shard_dir, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="pipe: command.*data.root"):
        load_shards(f"pipe:cat {shard_dir}/shard-{{000000..000001}}.tar", None, 3, 16)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "index.json").write_text((shard_dir / "index.json").read_text())
    assert len(load_shards(pattern(shard_dir), str(moved), 3, 16)) == 48
    assert len(load_shards(str(shard_dir / "shard-{000002..000003}.tar"), None, 3, 16)) == 12
    with pytest.raises(DatasetFormatError, match="lists no shard named 'shard-000008.tar'.*2 of the 3 shards"):
        load_shards(str(shard_dir / "shard-{000007..000009}.tar"), None, 3, 16)
    index = json.loads((shard_dir / "index.json").read_text())
    index["shards"][0]["samples"] = 7
    (moved / "index.json").write_text(json.dumps(index))
    shards = load_shards(pattern(shard_dir), str(moved), 3, 16)
    with pytest.raises(DatasetFormatError, match="holds 6 samples but .* says 7"):
        list(shards.samples(0, set(range(7))))


def test_a_changed_or_missing_shard_is_named(shard_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shard_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "shard-000001.tar").write_bytes((copy / "shard-000001.tar").read_bytes()[:3000])
    (copy / "shard-000002.tar").unlink()
    shards = load_shards(pattern(copy), None, 3, 16)
    with pytest.raises(DatasetFormatError, match="shard-000001.tar is 3000 bytes but its index says"):
        list(shards.samples(1, {0}))
    with pytest.raises(DatasetNotFoundError, match="shard .*shard-000002.tar does not exist"):
        list(shards.samples(2, {0}))
    cfg = cfg_for(copy, **{"data.num_workers": 2, "data.batch_size": 2})
    with pytest.raises((DatasetNotFoundError, DatasetFormatError), match=r"shard-00000[12]\.tar") as info:
        list(TrainBatches(cfg).epoch(0))  # raised from a loader worker as itself, without its traceback
    assert "Traceback" not in str(info.value) and "worker" not in str(info.value)


# ---------------------------------------------------------------- the plan


def test_readers_split_the_shards_disjointly_and_evenly():
    counts = [10, 9, 10, 8, 10, 10, 9, 7]
    groups = assign_shards(counts, 3)
    assert sorted(k for g in groups for k in g) == list(range(8))
    totals = [sum(counts[k] for k in g) for g in groups]
    assert max(totals) - min(totals) <= max(counts)
    with pytest.raises(ConfigError, match="8 shards but 2 process\\(es\\) x 5 loader worker"):
        ShardPlan(counts, 2, 5, 4, 10, 0)
    with pytest.raises(ConfigError, match="data.batch_size=40 is larger"):
        ShardPlan(counts, 2, 2, 40, 10, 0)


def test_shuffle_buffer_emits_a_permutation_local_to_its_size():
    order = buffer_order(1000, 50, random.Random(0))
    assert sorted(order) == list(range(1000))
    assert order[:10] != list(range(10)) and buffer_order(20, 1, random.Random(0)) == list(range(20))
    # an item never comes out before it was read, and the buffer holds at most 50
    for t, p in enumerate(order[:950]):
        assert p <= t + 50


def labels_by_epoch(shard_dir, workers, epochs=(0, 1), world=1, rank=0, start=0):
    tb = TrainBatches(cfg_for(shard_dir, **{"data.num_workers": workers}), rank=rank, world_size=world)
    return tb, {e: [b for b in tb.epoch(e, start=start if e == epochs[0] else 0)] for e in epochs}


@pytest.fixture(scope="module")
def labelled_shards(tmp_path_factory):
    """48 images, one class each, so a batch's labels name its samples; 8 shards of 6."""
    root = write_varied_folder(tmp_path_factory.mktemp("one"), classes=48, per_class=1, seed=2, sides=(17, 40))
    out = tmp_path_factory.mktemp("one_shards")
    writer.write_shards(root / "train", out, num_shards=8)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch_in_a_new_order(labelled_shards, workers):
    tb, epochs = labels_by_epoch(labelled_shards, workers)
    assert tb.batches_per_epoch == 12
    orders = {e: torch.cat([b.labels for b in batches]).tolist() for e, batches in epochs.items()}
    for order in orders.values():
        assert sorted(order) == list(range(48))
    assert orders[0] != orders[1]
    assert epochs[0][0].images.dtype == torch.uint8 and epochs[0][0].images.shape == (4, 3, 16, 16)


def test_resume_at_any_batch_is_exact(labelled_shards):
    tb = TrainBatches(cfg_for(labelled_shards, **{"data.num_workers": 2}))
    full = list(tb.epoch(1))
    for start in range(len(full) + 1):
        tail = list(tb.epoch(1, start=start))
        assert len(tail) == len(full) - start
        for a, b in zip(full[start:], tail):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.ctx_idx, b.ctx_idx) and torch.equal(a.tgt_idx, b.tgt_idx)


def test_resume_opens_only_the_shards_it_still_needs(labelled_shards, monkeypatch):
    tb = TrainBatches(cfg_for(labelled_shards, **{"data.shuffle_buffer": "1"}))
    opened = []
    original = tb.dataset.samples

    def spy(shard, wanted):
        opened.append(shard)
        return original(shard, wanted)
    monkeypatch.setattr(tb.dataset, "samples", spy)
    list(tb.epoch(0, start=10))  # the last 2 of 12 batches: 8 samples, in the last 2 shards of the epoch order
    assert len(opened) == 2


def test_pipe_commands_give_the_same_stream(labelled_shards):
    local = list(TrainBatches(cfg_for(labelled_shards)).epoch(0))
    cfg = cfg_for(labelled_shards, **{"data.root": str(labelled_shards)})
    cfg.data.shards = f"pipe:cat {pattern(labelled_shards)}"
    piped = list(TrainBatches(cfg).epoch(0))
    assert [torch.equal(a.images, b.images) for a, b in zip(local, piped)] == [True] * len(local)


def test_a_failing_pipe_command_is_named(labelled_shards):
    cfg = cfg_for(labelled_shards, **{"data.root": str(labelled_shards)})
    cfg.data.shards = f"pipe:cat /nonexistent/{pattern(labelled_shards).rsplit('/', 1)[1]}"
    with pytest.raises(DatasetFormatError, match="pipe:cat /nonexistent/shard-00000"):
        next(TrainBatches(cfg).epoch(0))


def test_bad_members_are_replaced_and_reported(tmp_path, labelled_shards):
    out = tmp_path / "bad"
    out.mkdir()
    for p in labelled_shards.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    path = out / "shard-000000.tar"
    items = members(path)
    items[0] = (items[0][0], b"")  # the first sample's image is empty
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    index = json.loads((out / "index.json").read_text())
    index["shards"][0]["bytes"] = path.stat().st_size
    (out / "index.json").write_text(json.dumps(index))
    tb = TrainBatches(cfg_for(out))
    batches = list(tb.epoch(0))
    assert sum(len(b.bad_images) for b in batches) == 1
    assert f"shard-000000.tar:{items[0][0].split('.')[0]}" in tb.bad_images.seen.popitem()[0]


def test_trainer_resumes_a_shard_run_exactly(labelled_shards, tmp_path, one_thread):
    """Through the trainer and its checkpoint (loader workers: test_resume_at_any_batch_is_exact)."""
    over = {"data.batch_size": 8, "training.epochs": 2, "checkpoint.every_epochs": 0}
    full = Trainer(cfg_for(labelled_shards, **over), run_dir=tmp_path / "full")
    assert full.train()["step"] == 12
    cut = Trainer(cfg_for(labelled_shards, **over, **{"training.stop_at_step": 4}), run_dir=tmp_path / "cut")
    assert cut.train()["stopped"] == "stop_at_step 4"
    rest = Trainer(cfg_for(labelled_shards, **over), run_dir=tmp_path / "cut", resume="auto")
    assert rest.step == 4 and rest.train()["step"] == 12
    for (name, p), q in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resuming the shard stream"
    assert full.data_stream()["shard_readers"] == 1
    assert full.collapse.images.shape[0] == 8 and full.collapse.start is not None  # the first 8 shard images


def test_a_shard_run_with_tensorboard_pictures_on_trains_and_explains(labelled_shards, tmp_path, caplog, one_thread):
    over = {"data.batch_size": 8, "logging.tensorboard": "true", "logging.images_every_epochs": 1}
    with caplog.at_level(logging.INFO, logger="jepa"):
        assert Trainer(cfg_for(labelled_shards, **over), run_dir=tmp_path / "r").train()["stopped"] == "completed"
    assert "no training pictures for a streamed dataset" in caplog.text
