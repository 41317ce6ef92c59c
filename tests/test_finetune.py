"""Fine-tuning: layer-wise LR decay, warm-up + cosine, label smoothing, low-shot subsets, checkpoints and an
exact resume through the trainer's Checkpointer, and the result in the evaluation JSON."""
import json

import pytest
import torch

from jepa import eval as jeval
from jepa.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint
from jepa.config import load_config
from jepa.finetune import Classifier, Finetuner, finetune_config, layer_of, main
from jepa.optim import layer_decay_groups, set_schedule
from jepa.train import Trainer

from small_config import own_data_root_run_checkpoint, stopped_run_checkpoint

SMALL = {"model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2", "model.pred_dim": "16",
         "model.pred_depth": "1", "model.pred_heads": "2", "masks.min_keep": "4", "data.batch_size": "32",
         "data.subset": "128", "training.epochs": "1", "logging.progress": "false", "logging.tensorboard": "false",
         "training.device": "cpu"}
# 10 shots x 10 classes = 100 images, batch 40 -> 2 steps an epoch, 3 epochs
FT = {"finetune.lowshot_epochs": "3", "finetune.batch_size": "40", "logging.progress": "false",
      "logging.tensorboard": "false", "logging.log_every": "1", "checkpoint.keep_last": "10"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return stopped_run_checkpoint(tmp_path_factory, SMALL)


def tuner(checkpoint, run_dir, resume=None, init="pretrained", **over):
    cfg = finetune_config(checkpoint, {**FT, **over})
    return Finetuner(cfg, checkpoint, run_dir=run_dir, shots=10, init=init, test_subset=200, resume=resume,
                     command=["python", "-m", "jepa.finetune", "--checkpoint", str(checkpoint)])


def test_layer_decay_scales_the_learning_rate_block_by_block():
    cfg = load_config(None, {**SMALL, "model.depth": "3"})
    model = Classifier(jeval.random_init_encoder(cfg, "cpu"), 10)
    groups = layer_decay_groups(model.named_parameters(), lambda n: layer_of(n, 3), 4, 0.05, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decays = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert scale[id(names["head.weight"])] == 1 and scale[id(names["encoder.norm.weight"])] == 1
    assert scale[id(names["encoder.blocks.2.attn.qkv.weight"])] == 0.5
    assert scale[id(names["encoder.blocks.0.mlp.fc1.weight"])] == 0.125
    assert scale[id(names["encoder.patch_embed.weight"])] == 0.0625
    assert decays[id(names["head.weight"])] == 0.05 and decays[id(names["head.bias"])] == 0
    assert decays[id(names["encoder.blocks.1.norm1.weight"])] == 0
    assert len(scale) == len(names)  # every parameter in exactly one group
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_schedule(opt, 2e-3, 0.1)
    assert sorted({g["lr"] for g in opt.param_groups}) == [2e-3 * 0.5 ** k for k in (4, 3, 2, 1, 0)]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.1, 0.0}


def test_finetune_trains_reports_and_resumes_exactly(checkpoint, tmp_path):
    full = tuner(checkpoint, tmp_path / "full")
    assert len(full.indices) == 100 and (full.batch_size, full.steps_per_epoch, full.total_steps) == (40, 2, 6)
    assert full.schedules.lr_at(0) == 0.0 and full.schedules.warmup_steps == 1  # 10 % of 6 steps, rounded
    before = {k: v.clone() for k, v in full.model.state_dict().items()}
    result = full.train()
    assert result["stopped"] == "completed" and result["step"] == 6 and 0 <= result["test_top1"] <= 1
    assert any(not torch.equal(before[k], v) for k, v in full.model.state_dict().items() if k.startswith("encoder."))
    report = json.loads(jeval.report_path(checkpoint, "fashion_mnist").read_text())
    assert report["results"]["pretrained"]["finetune_shots10"] == round(result["test_top1"], 6)
    run = report["finetune_runs"]["pretrained.finetune_shots10"]
    assert (run["train_images"], run["epochs"], run["steps"], run["layer_decay"]) == (100, 3, 6, 0.75)
    assert json.loads((tmp_path / "full" / "result.json").read_text())["test_top1"] == result["test_top1"]
    state = load_checkpoint(checkpoint_path(tmp_path / "full", 6))
    assert state["kind"] == "finetune" and state["epoch"] == 3

    cut = tuner(checkpoint, tmp_path / "cut", **{"training.stop_at_step": "3"})
    assert cut.train()["stopped"] == "stop_at_step 3"  # mid-epoch: epoch 1, batch 1
    resumed = tuner(checkpoint, tmp_path / "cut", resume="auto")
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (3, 1, 1)
    assert resumed.train()["test_top1"] == result["test_top1"]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert [p.name for p in list_checkpoints(tmp_path / "cut")][0] == "ckpt_step00000006.pt"


def test_finetune_shares_the_pretraining_loop_every_steps_checkpoints_and_a_reached_stop(checkpoint, tmp_path):
    """One run lifecycle (jepa/run.py): ``checkpoint.every_steps`` and a stop already reached act as in pre-training."""
    over = {"checkpoint.every_steps": "1", "training.stop_at_step": "3"}
    assert tuner(checkpoint, tmp_path, **over).train()["stopped"] == "stop_at_step 3"
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt_step0000000{k}.pt" for k in (3, 2, 1)]
    again = tuner(checkpoint, tmp_path, resume="auto", **over)
    assert again.train() == {"stopped": "stop_at_step 3 (already reached)", "step": 3, "seconds": 0.0,
                             "run_dir": str(tmp_path)}
    pretraining = load_checkpoint(checkpoint)
    finetuning = load_checkpoint(checkpoint_path(tmp_path, 3))
    assert set(finetuning) - {"kind"} <= set(pretraining) and finetuning["kind"] == "finetune"


def test_finetune_and_pretraining_checkpoints_do_not_resume_each_other(checkpoint, tmp_path):
    ft = tuner(checkpoint, tmp_path / "ft", **{"training.stop_at_step": "1"})
    ft.train()
    with pytest.raises(CheckpointError, match="jepa.finetune"):
        Trainer(load_config(None, SMALL), run_dir=tmp_path / "pre", resume=str(checkpoint_path(tmp_path / "ft", 1)))
    with pytest.raises(CheckpointError, match="jepa.train"):
        tuner(checkpoint, tmp_path / "ft2", resume=str(checkpoint))


def test_label_smoothing_and_random_init_baseline(checkpoint, tmp_path):
    smooth = tuner(checkpoint, tmp_path / "a", **{"finetune.label_smoothing": "0.5"})
    images, y = smooth.train_ds.get_batch(smooth.indices[:8])
    x = smooth.transform(images)
    with torch.no_grad():
        logits = smooth.model(x)
    want = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.5)
    assert smooth.train_step((x, y))["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    scratch = tuner(checkpoint, tmp_path / "b", init="random")
    random = jeval.random_init_encoder(scratch.cfg, "cpu")
    for a, b in zip(scratch.model.encoder.state_dict().values(), random.state_dict().values()):
        assert torch.equal(a, b)


def test_finetune_cli(checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoint), "--shots", "2", "--test-subset", "100", "--run-dir",
            str(tmp_path / "ft"), "--finetune.lowshot_epochs", "2", "--training.stop_at_step", "1",
            "--logging.progress", "false"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "--resume auto" in err and "python -m jepa.finetune" in err and "--shots 2" in err
    assert main(argv[:-4] + ["--logging.progress", "false", "--resume", "auto"]) == 0
    assert "finetune_shots2: test top-1" in capsys.readouterr().out
    assert main(argv + ["--model.depth", "3"]) == 2
    assert "model.depth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint), "--shots", "2", "--fraction", "0.1"])


def test_finetune_finds_the_data_where_the_run_did(tmp_path_factory, tmp_path, monkeypatch, capsys):
    checkpoint, root = own_data_root_run_checkpoint(tmp_path_factory)
    monkeypatch.delenv("JEPA_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/imagefolder: only the run's data.root holds the images
    assert main(["--checkpoint", str(checkpoint), "--shots", "2", "--run-dir", str(tmp_path / "ft"),
                 "--finetune.lowshot_epochs", "1", "--finetune.batch_size", "6", "--logging.progress", "false",
                 "--logging.tensorboard", "false"]) == 0
    assert "finetune_shots2: test top-1" in capsys.readouterr().out
    assert main(["--checkpoint", str(checkpoint), "--shots", "2", "--run-dir", str(tmp_path / "ft2"),
                 "--data-root", str(tmp_path / "nowhere"), "--logging.progress", "false"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_downstream_benchmark_smoke(checkpoint, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = Path(__file__).resolve().parents[1] / "bench" / "downstream_fashion_mnist.py"
    spec = importlib.util.spec_from_file_location("downstream", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results"
    assert bench.main(["--checkpoint", str(checkpoint), "--out-dir", str(out), "--train-subset", "200",
                       "--test-subset", "50", "--skip-random-finetune", "--", "--probe.sgd_epochs", "1",
                       "--probe.attentive_epochs", "1", "--probe.batch_size", "100", "--finetune.epochs", "1",
                       "--finetune.lowshot_epochs", "1", "--logging.progress", "false"]) == 0
    result = json.loads((out / "downstream_fashion_mnist.json").read_text())
    pre = result["report"]["results"]["pretrained"]
    assert {"linear", "knn", "knn_k", "linear_sgd", "attentive", "finetune", "finetune_shots10"} <= set(pre)
    assert "finetune" not in result["report"]["results"]["random_init"]  # --skip-random-finetune
    assert set(result["seconds"]) == {"evaluation (all probes, baselines)", "fine-tune 10-shot (pretrained)",
                                      "fine-tune full (pretrained)"}
    md = (out / "downstream_fashion_mnist.md").read_text()
    assert "| pre-trained |" in md and "fine-tune 10-shot top-1 | full fine-tune top-1 |" in md
