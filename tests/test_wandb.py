"""Weights & Biases as a second sink: the same scalars and pictures as TensorBoard, the resolved config, one W&B run
across --resume auto, and clean errors without the package or a login. W&B runs offline here (no network)."""
import io
import json
import struct
import sys

import numpy as np
import pytest
import wandb
from PIL import Image
from wandb.proto import wandb_internal_pb2

from jepa.config import ConfigError, load_config
from jepa.monitoring.sinks import WANDB_ID_FILE
from jepa.train import Trainer, main

from small_config import SMALL_BASE

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {**SMALL_BASE, "data.subset": "64", "data.batch_size": "16", "logging.log_every": "1",
         "logging.tensorboard": "true", "logging.wandb": "true", "logging.rankme_batch": "16"}
META = ("_step", "_runtime", "_timestamp")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """W&B offline, silent and writing under tmp_path, whatever the machine's own W&B variables say."""
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_NAME", "WANDB_RESUME", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()


def records(path):
    """The protobuf records of an offline run's ``.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts, pos = parts + data[pos + 7:pos + 7 + size], pos + 7 + size
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def offline_runs(root):
    """Each offline run under ``root``, oldest first: its id, config, history rows by step, and files folder."""
    runs = []
    for path in sorted(root.rglob("run-*.wandb")):
        run = {"id": None, "config": {}, "history": {}, "files": path.parent / "files"}
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run["id"] = r.run.run_id
                run["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                run["history"].setdefault(row["_step"], {}).update(row)
        runs.append(run)
    return runs


def tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def test_wandb_gets_the_tensorboard_scalars_pictures_and_the_config(tmp_path):
    cfg = load_config(None, SMALL)
    Trainer(cfg, run_dir=tmp_path / "run").train()
    [run] = offline_runs(tmp_path / "wandb_dir")
    assert (tmp_path / "run" / WANDB_ID_FILE).read_text() == f"{run['id']}\n"
    assert {k: v for k, v in run["config"].items() if k != "_wandb"} == cfg.to_dict()

    ea = tensorboard(tmp_path / "run")
    tb = {(tag, e.step): e.value for tag in ea.Tags()["scalars"] for e in ea.Scalars(tag)}
    wb = {(key, step): value for step, row in run["history"].items() for key, value in row.items()
          if key not in META and not key.startswith("pictures/")}
    assert {tag for tag, _ in tb} >= {"train/loss", "train/lr", "train/rankme", "train/epoch_loss", "masks/context_tokens"}
    assert sorted(wb) == sorted(tb)
    for key, value in wb.items():
        assert np.float32(value) == tb[key], key  # TensorBoard keeps float32
    assert [step for (tag, step) in sorted(tb) if tag == "train/loss"] == [1, 2, 3, 4]

    for tag in ("pictures/masks", "pictures/features", "pictures/retrieval"):
        [event] = ea.Images(tag)
        row = run["history"][event.step]
        assert row[f"{tag}/_type"] == "image-file"
        shown = np.asarray(Image.open(run["files"] / row[f"{tag}/path"]))
        assert np.array_equal(shown, np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))), tag


def test_resume_auto_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_DIR")  # then the files go under the run dir
    over = {**SMALL, "logging.tensorboard": "false", "logging.images_every_epochs": "0", "logging.rankme_batch": "0"}
    Trainer(load_config(None, {**over, "training.stop_at_step": "2"}), run_dir=tmp_path / "run").train()
    Trainer(load_config(None, over), run_dir=tmp_path / "run", resume="auto").train()
    Trainer(load_config(None, over), run_dir=tmp_path / "other").train()
    first, resumed = offline_runs(tmp_path / "run" / "wandb")
    [other] = offline_runs(tmp_path / "other" / "wandb")
    assert first["id"] == resumed["id"] != other["id"]
    assert (tmp_path / "run" / WANDB_ID_FILE).read_text() == f"{first['id']}\n"
    assert sorted(first["history"]) == [1, 2] and sorted(resumed["history"]) == [3, 4]
    assert not list((tmp_path / "wandb_dir").iterdir())


def test_without_wandb_installed_the_run_stops_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    argv = ["--run-dir", str(tmp_path / "run")] + [f"--{k}={v}" for k, v in SMALL.items()]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: logging.wandb: true needs the wandb package") and "pip install 'jepa-trainer[wandb]'" in err
    assert not (tmp_path / "run").exists()


def test_wandb_failing_to_start_is_one_line_error(tmp_path, monkeypatch, capsys):
    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")
    monkeypatch.setattr(wandb, "init", refuse)
    argv = ["--run-dir", str(tmp_path / "run")] + [f"--{k}={v}" for k, v in SMALL.items()]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "W&B could not start a run: api_key not configured" in err and "WANDB_MODE=offline" in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.parametrize("name", ["team/jepa", "a:b", "x" * 129])
def test_a_bad_wandb_project_is_refused(name):
    with pytest.raises(ConfigError, match="logging.wandb_project: must be a W&B project name"):
        load_config(None, {"logging.wandb_project": name})
    assert load_config(None, {}).logging.wandb is False and load_config(None, {}).logging.wandb_project == "jepa"
