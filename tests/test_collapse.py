"""The collapse alarm: RankMe on embeddings of known rank, the one-time warning and progress-line mark, and
``train/rankme`` in TensorBoard from step 0 on a fixed held-out batch."""
import io
import logging
import math

import pytest
import torch
import torch.nn as nn

from jepa.config import load_config
from jepa.data.datasets import load_dataset
from jepa.distributed import DistInfo
from jepa.monitoring.collapse import CollapseMonitor, held_out_images
from jepa.monitoring.logger import TrainLogger
from jepa.monitoring.rankme import rankme
from jepa.train import Trainer

SMALL = {"model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2", "model.pred_dim": "16",
         "model.pred_depth": "1", "model.pred_heads": "2", "masks.min_keep": "4", "data.batch_size": "32",
         "data.subset": "128", "training.epochs": "1", "logging.progress": "false", "training.device": "cpu",
         "logging.log_every": "2"}

pytestmark = pytest.mark.usefixtures("one_thread")


def orthonormal(n, r, g, centred=False):
    x = torch.randn(n, r, generator=g, dtype=torch.float64)
    return torch.linalg.qr(x - x.mean(0) if centred else x)[0]


def test_rankme_of_embeddings_of_known_rank():
    g = torch.Generator().manual_seed(0)
    for r in (1, 3, 10, 32):
        z = 7.0 * orthonormal(64, r, g) @ orthonormal(32, r, g).T  # r equal singular values
        assert rankme(z).item() == pytest.approx(r, rel=1e-3)
    u, v = orthonormal(64, 2, g), orthonormal(32, 2, g)
    z = u @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ v.T  # p = (3/4, 1/4)
    want = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert rankme(z).item() == pytest.approx(want, rel=1e-4)
    assert rankme(1e-3 * z).item() == pytest.approx(want, rel=1e-4)  # scale-free
    assert rankme(torch.zeros(16, 8)).item() == pytest.approx(1.0, abs=1e-3)  # total collapse


class FixedEncoder(nn.Module):
    """Tokens ``[n, 4, 8]`` whose token means are ``self.means`` whatever the images are."""
    embed_dim = 8

    def __init__(self, means):
        super().__init__()
        self.means = means

    def forward(self, x):
        return self.means[: x.shape[0], None, :].expand(-1, 4, -1).float()


def test_collapse_alarm_warns_once_and_marks_the_progress_line(caplog):
    cfg = load_config(None, {**SMALL, "logging.rankme_batch": "16", "logging.collapse_warn_fraction": "0.5",
                             "logging.tensorboard": "false"})
    g = torch.Generator().manual_seed(1)
    # rank 8 with equal singular values around a mean that the monitor removes (centred columns)
    encoder = FixedEncoder(orthonormal(16, 8, g, centred=True) @ orthonormal(8, 8, g).T + 3.0)
    monitor = CollapseMonitor(cfg, encoder, load_dataset("fashion_mnist", "train", subset=64), torch.device("cpu"),
                              torch.float32)
    assert monitor.images.shape == (16, 1, 28, 28) and monitor.start == pytest.approx(8, rel=1e-3)
    encoder.means = orthonormal(16, 3, g, centred=True) @ orthonormal(8, 3, g).T - 1.0  # rank 3 < 0.5 x 8
    stream = io.StringIO()
    logger = TrainLogger(cfg, None, DistInfo(), torch.device("cpu"), None, 32)
    logger.show_progress = True
    logger.start(0, 10)
    logger.progress.stream = stream
    with caplog.at_level(logging.WARNING, logger="jepa"):
        for step in (2, 4):
            measured = monitor.measure()
            logger.log(step, {"loss": torch.tensor(0.5), "lr": 1e-3, **measured},
                       {"rankme": monitor.check(step, float(measured["rankme"]))})
    assert caplog.text.count("possible representation collapse") == 1
    assert "train/rankme is 3.0 at step 2" in caplog.text and "docs/monitoring.md" in caplog.text
    assert "rankme 3.0 (collapse?)" in stream.getvalue()
    assert monitor.check(6, 7.9) == "7.9"  # back above the threshold: no mark, no second warning
    assert caplog.text.count("possible representation collapse") == 1


def test_held_out_batch_is_fixed_test_images_else_training_images():
    cfg = load_config(None, SMALL)
    train = load_dataset("fashion_mnist", "train", subset=128)
    a, where = held_out_images(cfg, 20, train)
    b, _ = held_out_images(cfg, 20, train)
    assert where == "test split" and torch.equal(a, b) and a.shape == (20, 1, 28, 28)
    synthetic = load_dataset("synthetic", "train", channels=1, image_size=28, synthetic_size=64)
    c, where = held_out_images(cfg, 20, synthetic)
    assert where == "training images" and c.shape == (20, 1, 28, 28)


def test_trainer_logs_rankme_from_step_0_and_it_measures_the_target_encoder(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = Trainer(load_config(None, SMALL), run_dir=tmp_path)
    def centred_rankme():
        with torch.no_grad():
            z = trainer.target_encoder(trainer.collapse.images).mean(1)
        return rankme(z - z.mean(0)).item()
    want0 = centred_rankme()
    assert trainer.collapse.images.shape[0] == 32 and trainer.collapse.start == pytest.approx(want0, rel=1e-6)
    trainer.train()
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    logged = {e.step: e.value for e in ea.Scalars("train/rankme")}
    assert sorted(logged) == [0, 2, 4] and logged[0] == pytest.approx(want0, rel=1e-5)
    assert logged[4] == pytest.approx(centred_rankme(), rel=1e-5)
    assert "train/target_std" in ea.Tags()["scalars"]


def test_rankme_can_be_turned_off(tmp_path):
    trainer = Trainer(load_config(None, {**SMALL, "logging.rankme_batch": "0", "logging.tensorboard": "false"}),
                      run_dir=tmp_path)
    assert trainer.collapse.images is None and trainer.collapse.measure() == {}
