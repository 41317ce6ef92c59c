"""The config overrides most training tests start from: a tiny model on a quiet one-epoch CPU run.

Each test file builds its own dict as ``{**SMALL_BASE, ...}`` with only what it changes (data size, schedule,
logging), so the differences between files stay visible where they matter.
"""
TINY_MODEL = {"model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2", "model.pred_dim": "16",
              "model.pred_depth": "1", "model.pred_heads": "2"}
QUIET = {"training.device": "cpu", "logging.progress": "false", "logging.tensorboard": "false"}
SMALL_BASE = {**TINY_MODEL, "masks.min_keep": "4", "training.epochs": "1", **QUIET}


def stopped_run_checkpoint(tmp_path_factory, overrides: dict, steps: int = 2):
    """The checkpoint of a run of ``overrides`` stopped after ``steps`` steps (for module-scoped fixtures)."""
    from jepa.checkpoint import checkpoint_path
    from jepa.config import load_config
    from jepa.train import Trainer
    run = tmp_path_factory.mktemp("run")
    Trainer(load_config(None, {**overrides, "training.stop_at_step": str(steps)}), run_dir=run).train()
    return checkpoint_path(run, steps)


def own_data_root_run_checkpoint(tmp_path_factory, steps: int = 2):
    """A run trained on an image folder found only through ``--data.root`` (``train/`` and ``test/`` splits of 3
    classes), stopped after ``steps`` steps: eval, fine-tuning and pictures must find the data without it."""
    import shutil
    from data_formats import write_varied_folder
    root = tmp_path_factory.mktemp("own_data") / "pictures of mine"
    write_varied_folder(root, classes=3, per_class=8, seed=0)
    shutil.move(write_varied_folder(root.parent / "held_out", classes=3, per_class=4, seed=1) / "train", root / "test")
    overrides = {**SMALL_BASE, "data.dataset": "imagefolder", "data.root": str(root), "data.image_size": "16",
                 "data.channels": "3", "data.batch_size": "4", "model.patch_size": "4"}
    return stopped_run_checkpoint(tmp_path_factory, overrides, steps), root
