"""Evaluation: k-NN and linear probe protocols, feature cache, baselines, the training-time monitor, the benchmark."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jepa import eval as jeval
from jepa.eval import command as eval_command
from jepa.checkpoint import load_checkpoint, with_checksum
from jepa.io import atomic_save
from jepa.models import pool_tokens
from jepa.monitoring.knn import KnnMonitor
from jepa.config import load_config
from jepa.data.datasets import load_dataset
from jepa.train import Trainer
from jepa.data.transforms import EvalTransform

from small_config import SMALL_BASE, own_data_root_run_checkpoint, stopped_run_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = {**SMALL_BASE, "data.batch_size": "32", "data.subset": "128"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return stopped_run_checkpoint(tmp_path_factory, SMALL)


def test_eval_finds_the_data_where_the_run_did_and_an_explicit_data_root_wins(tmp_path_factory, tmp_path,
                                                                            monkeypatch, capsys):
    checkpoint, root = own_data_root_run_checkpoint(tmp_path_factory)
    monkeypatch.delenv("JEPA_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/imagefolder: only the run's data.root holds the images
    assert jeval.main(["--checkpoint", str(checkpoint), "--no-progress", "--no-cache", "--protocol", "knn"]) == 0
    report = json.loads(jeval.report_path(checkpoint, "imagefolder").read_text())
    assert report["train_images"] == 24 and report["test_images"] == 12
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert jeval.main(["--checkpoint", str(checkpoint), "--no-progress", "--no-cache", "--protocol", "knn",
                       "--data-root", str(elsewhere)]) == 2
    assert str(elsewhere) in capsys.readouterr().err


def test_knn_votes_are_temperature_weighted_cosine():
    # two far class-0 neighbours against one very close class-1 neighbour
    train_x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
    train_y = torch.tensor([1, 0, 0])
    q = torch.tensor([[10.0, 0.5]])  # cosine: 0.999 to item 0, 0.64 to items 1 and 2 (scale-free)
    assert jeval.knn_predict(train_x, train_y, q, 2, k=3, temperature=0.07).item() == 1
    assert jeval.knn_predict(train_x, train_y, q, 2, k=3, temperature=100.0).item() == 0  # ~ plain majority
    assert jeval.knn_predict(train_x, train_y, q, 2, k=1, temperature=100.0).item() == 1


def test_linear_probe_separates_blobs_and_ignores_feature_scale():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 8, generator=g)
    acc = jeval.linear_probe(x[:200], y[:200], x[200:], y[200:], 3)
    assert acc > 0.95
    scaled = x * torch.logspace(-3, 3, 8)  # standardisation makes the probe blind to per-feature scale
    assert jeval.linear_probe(scaled[:200], y[:200], scaled[200:], y[200:], 3) == pytest.approx(acc, abs=0.02)
    shuffled = y[torch.randperm(300, generator=g)]
    assert jeval.linear_probe(x[:200], shuffled[:200], x[200:], shuffled[200:], 3) < 0.6


def test_probes_on_real_fashion_mnist_raw_pixels():
    train = load_dataset("fashion_mnist", "train", subset=1500)
    test = load_dataset("fashion_mnist", "test", subset=300)
    t = EvalTransform(28, [0.286], [0.353])
    a, b = jeval.extract_features(None, train, t), jeval.extract_features(None, test, t)
    assert a[0].shape == (1500, 784) and torch.equal(a[1], train.labels)
    res = jeval.run_protocols(a, b, 10)
    assert res["linear"] > 0.70 and res["knn"] > 0.70, res  # ~0.8 each; chance is 0.1


def test_last4_features_end_with_the_mean_features():
    cfg = load_config(None, {**SMALL, "model.depth": "5"})
    enc = jeval.random_init_encoder(cfg, "cpu")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        mean = pool_tokens(enc, x, "mean")
        last4 = pool_tokens(enc, x, "last4")
    assert mean.shape == (3, 32) and last4.shape == (3, 128)
    torch.testing.assert_close(last4[:, -32:], mean)


def test_random_init_baseline_is_the_runs_starting_encoder_and_leaves_rng_alone(tmp_path):
    cfg = load_config(None, SMALL)
    trainer = Trainer(cfg, run_dir=tmp_path)
    state = torch.get_rng_state()
    enc = jeval.random_init_encoder(cfg, "cpu")
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(enc.state_dict().values(), trainer.model.target_encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_eval_cli_with_baselines_writes_json_and_uses_the_cache(checkpoint, capsys, monkeypatch):
    argv = ["--checkpoint", str(checkpoint), "--baselines", "--train-subset", "300", "--test-subset", "100",
            "--no-progress"]
    assert jeval.main(argv) == 0
    out = capsys.readouterr().out
    assert "| raw pixels |" in out and "| random init |" in out and "| pre-trained |" in out
    report = json.loads(checkpoint.with_name("ckpt_step00000002.eval.fashion_mnist.json").read_text())
    assert set(report["results"]) == {"pretrained", "random_init", "raw_pixels"}
    for r in report["results"].values():
        assert 0.1 < r["linear"] <= 1 and 0.1 < r["knn"] <= 1
    dims = {m: r["feature_dim"] for m, r in report["results"].items()}
    assert dims == {"raw_pixels": 784, "random_init": 32, "pretrained": 32}
    assert report["knn"]["k"] == 20 and report["train_images"] == 300
    cached = sorted(p.name for p in (checkpoint.parent / "eval_cache").iterdir())
    assert len(cached) == 4 and sum(n.startswith("ckpt_step00000002.target") for n in cached) == 2

    calls = []
    real = jeval.extract_features
    monkeypatch.setattr(eval_command, "extract_features", lambda enc, *a, **k: calls.append(enc) or real(enc, *a, **k))
    assert jeval.main(argv) == 0
    again = json.loads(checkpoint.with_name("ckpt_step00000002.eval.fashion_mnist.json").read_text())
    assert all(enc is None for enc in calls), "encoder features should come from the cache"
    for method in report["results"]:
        assert again["results"][method]["knn"] == report["results"][method]["knn"]

    # a changed checkpoint file (same name) must not reuse the old features
    calls.clear()
    state = load_checkpoint(checkpoint)
    state["model"]["target_encoder.norm.bias"] += 1.0
    other = checkpoint.with_name("changed.pt")
    atomic_save(with_checksum(state), other)
    assert jeval.main(["--checkpoint", str(other), "--train-subset", "300", "--test-subset", "100",
                       "--protocol", "knn", "--no-progress", "--out", str(other.with_suffix(".json"))]) == 0
    assert len(calls) == 2 and all(enc is not None for enc in calls)
    assert set(json.loads(other.with_suffix(".json").read_text())["results"]["pretrained"]) == {
        "knn", "knn_k", "feature_dim", "seconds"}


def test_eval_cli_errors_are_clear(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert jeval.main(["--checkpoint", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert jeval.main(["--checkpoint", str(checkpoint), "--dataset", "cifar10", "--data-root",
                       str(tmp_path / "nowhere"), "--no-cache"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_python_m_jepa_eval_runs_the_command(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, "-m", "jepa.eval", "--checkpoint", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and str(bad) in done.stderr


def test_knn_monitor_touches_neither_rng_nor_weights(tmp_path):
    cfg = load_config(None, {**SMALL, "eval.max_train": "200", "eval.max_test": "50"})
    trainer = Trainer(cfg, run_dir=tmp_path)
    rng = torch.get_rng_state()
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    acc = trainer.knn_monitor(trainer.model, trainer.epoch)
    assert 0.1 < acc <= 1.0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.model.target_encoder.training == trainer.model.context_encoder.training
    train_idx, test_idx = trainer.knn_monitor.data[2]
    assert len(train_idx) == 200 and len(test_idx) == 50
    assert trainer.knn_monitor(trainer.model, trainer.epoch) == acc  # the same fixed subsets every epoch


def test_knn_monitor_during_training_picks_best_checkpoint(tmp_path, monkeypatch):
    cfg = load_config(None, {**SMALL, "training.epochs": "3", "eval.every_epochs": "1", "eval.max_train": "200",
                             "eval.max_test": "50", "checkpoint.monitor": "knn", "checkpoint.keep_last": "1"})
    seen = []
    trainer = Trainer(cfg, run_dir=tmp_path)
    real = KnnMonitor.__call__
    monkeypatch.setattr(KnnMonitor, "__call__",
                        lambda mon, model, epoch: seen.append((trainer.step, real(mon, model, epoch))) or seen[-1][1])
    trainer.train()
    assert [s for s, _ in seen] == [4, 8, 12]
    best_step, best_acc = max(seen, key=lambda s: (s[1], -s[0]))
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == best_step and best["best_metric"] == -best_acc


def test_quality_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = importlib.util.spec_from_file_location("quality", ROOT / "bench" / "quality_fashion_mnist.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results"
    code = bench.main(["--run-dir", str(tmp_path / "run"), "--out-dir", str(out), "--train-subset", "300",
                       "--test-subset", "100", "--", "--training.stop_at_step", "2", "--data.subset", "512",
                       "--model.depth", "1", "--model.embed_dim", "48", "--model.num_heads", "2",
                       "--logging.progress", "false", "--training.device", "cpu"])
    assert code == 0
    result = json.loads((out / "quality_fashion_mnist.json").read_text())
    assert set(result["results"]) == {"pretrained", "random_init", "raw_pixels"}
    assert result["eval"]["step"] == 2 and result["train_seconds"] > 0 and result["eval_seconds"] > 0
    assert isinstance(result["meets_target"], bool)
    md = (out / "quality_fashion_mnist.md").read_text()
    assert "| pre-trained |" in md and "target: linear >= 80 %" in md
    assert not math.isnan(result["results"]["pretrained"]["linear"])


def test_eval_precision_auto_follows_the_cpu_probe_and_keys_the_cache(checkpoint, tmp_path, monkeypatch):
    """``--precision auto`` computes features in bf16 where the (forced) CPU probe finds bf16 matrix units, says so
    in the report, and never reuses fp32 features from the cache for it."""
    seen = []
    real = jeval.extract_features
    monkeypatch.setattr(eval_command, "extract_features",
                        lambda *a, **k: seen.append(k["amp_dtype"]) or real(*a, **k))
    argv = ["--checkpoint", str(checkpoint), "--train-subset", "64", "--test-subset", "32", "--protocol", "knn",
            "--no-progress", "--force"]
    for forced, dtype in (("0", torch.float32), ("1", torch.bfloat16)):
        monkeypatch.setenv("JEPA_CPU_BF16", forced)
        out = tmp_path / f"r{forced}.json"
        assert jeval.main(argv + ["--out", str(out)]) == 0
        assert json.loads(out.read_text())["precision"] == str(dtype).replace("torch.", "")
        assert seen[-2:] == [dtype, dtype]  # train and test features, computed (not from the fp32 cache)
    assert jeval.main(argv + ["--out", str(tmp_path / "fp32.json"), "--precision", "fp32"]) == 0
    assert json.loads((tmp_path / "fp32.json").read_text())["precision"] == "float32"
