"""Downstream protocols that scale: multi-k k-NN in one search, low-shot subsets, batches, the streamed SGD linear
probe, the attentive probe, and the JSON report they accumulate into."""
import json

import pytest
import torch

from jepa import eval as jeval
from jepa.checkpoint import checkpoint_path
from jepa.config import load_config
from jepa.data.datasets import load_dataset
from jepa.eval.probes.attentive import AttentivePooler, attentive_probe
from jepa.eval.probes.data import batches, low_shot_indices
from jepa.eval.probes.linear_sgd import linear_sgd_probe
from jepa.config import ProbeConfig
from jepa.train import Trainer
from jepa.data.transforms import EvalTransform

SMALL = {"model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2", "model.pred_dim": "16",
         "model.pred_depth": "1", "model.pred_heads": "2", "masks.min_keep": "4", "data.batch_size": "32",
         "data.subset": "128", "training.epochs": "1", "logging.progress": "false", "logging.tensorboard": "false",
         "training.device": "cpu"}
FM = EvalTransform(28, [0.286], [0.353])

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion_mnist", "train", subset=1200), load_dataset("fashion_mnist", "test", subset=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    Trainer(load_config(None, {**SMALL, "training.stop_at_step": "2"}), run_dir=run).train()
    return checkpoint_path(run, 2)


def test_knn_for_several_k_in_one_search_matches_one_search_per_k():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    train_y = torch.randint(0, 5, (300,), generator=g)
    many = jeval.knn_predict_many(train_x, train_y, test_x, 5, (10, 20, 100), chunk=17)
    for k in (10, 20, 100):
        assert torch.equal(many[k], jeval.knn_predict(train_x, train_y, test_x, 5, k=k))
    res = jeval.run_protocols((train_x, train_y), (test_x, train_y[:50]), 5, "knn")
    assert set(res["knn_k"]) == {"10", "20", "100"} and res["knn"] == res["knn_k"]["20"]


def test_low_shot_subsets_are_balanced_and_fixed_by_the_seed():
    labels = torch.arange(1000) % 10
    labels[::7] = 3  # unequal classes
    a = low_shot_indices(labels, seed=0, shots=5)
    assert torch.equal(a, low_shot_indices(labels, seed=0, shots=5))
    assert not torch.equal(a, low_shot_indices(labels, seed=1, shots=5))
    assert torch.bincount(labels[a]).tolist() == [5] * 10 and len(set(a.tolist())) == 50
    f = low_shot_indices(labels, seed=0, fraction=0.1)
    counts = torch.bincount(labels)
    assert torch.equal(torch.bincount(labels[f]), (counts * 0.1).round().long().clamp_min(1))
    with pytest.raises(ValueError, match="only"):
        low_shot_indices(labels, seed=0, shots=500)
    with pytest.raises(ValueError, match="not both"):
        low_shot_indices(labels, seed=0, fraction=0.1, shots=1)


def test_batches_cover_the_indices_in_a_seeded_order_and_resume_mid_epoch(fmnist):
    train, _ = fmnist
    idx = torch.arange(100)
    plain = [y for _, y in batches(train, FM, 32, idx, "cpu")]
    assert [len(y) for y in plain] == [32, 32, 32, 4] and torch.equal(torch.cat(plain), train.labels[:100])
    ep0 = list(batches(train, FM, 32, idx, "cpu", shuffle_seed=3, epoch=0))
    ep1 = list(batches(train, FM, 32, idx, "cpu", shuffle_seed=3, epoch=1))
    assert not torch.equal(ep0[0][1], ep1[0][1])
    tail = list(batches(train, FM, 32, idx, "cpu", shuffle_seed=3, epoch=0, start=1, count=3))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(ep0[1:3], tail))


class CountingDataset:
    """Wraps a dataset and records the size of every batch read."""

    def __init__(self, ds):
        self.ds, self.reads = ds, []
        self.labels, self.num_classes = ds.labels, ds.num_classes

    def get_batch(self, idx):
        self.reads.append(len(idx))
        return self.ds.get_batch(idx)


def test_linear_sgd_probe_streams_batches_and_matches_the_lbfgs_probe(fmnist):
    train, test = fmnist
    counted = CountingDataset(train)
    seen = []

    def features(x):
        seen.append(x.shape[0])
        return x.flatten(1)
    settings = ProbeConfig(batch_size=100, sgd_epochs=4, sgd_lr=0.05)
    acc = linear_sgd_probe(features, counted, test, FM, 10, settings)
    a, b = jeval.extract_features(None, train, FM), jeval.extract_features(None, test, FM)
    lbfgs = jeval.linear_probe(a[0], a[1], b[0], b[1], 10)
    assert acc > 0.7 and abs(acc - lbfgs) < 0.06, (acc, lbfgs)
    assert max(seen) <= 100 and max(counted.reads) <= 100  # one batch of features at a time
    assert len(counted.reads) == (1 + 4) * 12  # one pass for the standardisation, then 4 epochs
    again = linear_sgd_probe(lambda x: x.flatten(1), train, test, FM, 10, settings)
    assert again == acc  # deterministic


def test_attentive_pooler_is_a_set_function_of_the_tokens():
    torch.manual_seed(0)
    pool = AttentivePooler(16, heads=4, queries=3)
    tokens = torch.randn(2, 9, 16)
    out = pool(tokens)
    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(pool(tokens[:, torch.randperm(9)]), out)
    # attention over two copies of every token is attention over the tokens
    torch.testing.assert_close(pool(torch.cat([tokens, tokens], 1)), out, rtol=1e-5, atol=1e-6)


def test_attentive_probe_learns_from_frozen_tokens(fmnist):
    train, test = fmnist
    cfg = load_config(None, SMALL)
    encoder = jeval.random_init_encoder(cfg, "cpu")
    settings = ProbeConfig(batch_size=100, attentive_epochs=6, attentive_lr=5e-3, attentive_warmup_epochs=0.5)
    acc = attentive_probe(encoder, 32, 2, train, test, FM, 10, settings)
    assert acc > 0.3, acc  # chance is 0.1; ~0.4 after these 72 steps
    assert attentive_probe(encoder, 32, 2, train, test, FM, 10, settings) == acc


def test_eval_cli_protocols_accumulate_in_one_report(checkpoint, capsys):
    common = ["--checkpoint", str(checkpoint), "--train-subset", "400", "--test-subset", "100", "--no-progress",
              "--batch-size", "100"]
    assert jeval.main(common + ["--protocol", "knn", "--baselines"]) == 0
    assert jeval.main(common + ["--protocol", "linear-sgd", "--baselines", "--probe.sgd_epochs", "1",
                                "--probe.batch_size", "100"]) == 0
    assert jeval.main(common + ["--protocol", "attentive", "--probe.attentive_epochs", "1",
                                "--probe.batch_size", "100"]) == 0
    out = capsys.readouterr().out
    assert "attentive probe top-1" in out and "SGD linear probe top-1" in out and "k-NN top-1 (k=100)" in out
    report = json.loads(jeval.report_path(checkpoint, "fashion_mnist").read_text())
    assert set(report["results"]["pretrained"]) >= {"knn", "knn_k", "linear_sgd", "attentive"}
    assert set(report["results"]["raw_pixels"]) >= {"knn", "linear_sgd"}
    assert "attentive" not in report["results"]["raw_pixels"]  # pixel patches carry no positions
    assert report["linear_sgd"]["sgd_epochs"] == 1 and report["attentive_probe"]["attentive_epochs"] == 1
    for r in report["results"].values():
        assert all(0 <= v <= 1 for k, v in r.items() if k in ("knn", "linear_sgd", "attentive"))
    # another subset is another evaluation: the report is replaced, not mixed
    assert jeval.main(common[:3] + ["300"] + common[4:] + ["--protocol", "knn"]) == 0
    report = json.loads(jeval.report_path(checkpoint, "fashion_mnist").read_text())
    assert set(report["results"]) == {"pretrained"} and "linear_sgd" not in report["results"]["pretrained"]


def test_eval_cli_rejects_overrides_outside_probe(checkpoint, capsys):
    with pytest.raises(SystemExit):
        jeval.main(["--checkpoint", str(checkpoint), "--model.depth", "3"])
    assert "--model.depth" in capsys.readouterr().err
    assert jeval.main(["--checkpoint", str(checkpoint), "--protocol", "linear-sgd", "--probe.sgd_epochs", "0"]) == 2
    assert "probe.sgd_epochs" in capsys.readouterr().err
