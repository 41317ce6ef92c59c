"""The config overrides most training tests start from: a tiny model on a quiet one-epoch CPU run.

Each test file builds its own dict as ``{**SMALL_BASE, ...}`` with only what it changes (data size, schedule,
logging), so the differences between files stay visible where they matter.
"""
TINY_MODEL = {"model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2", "model.pred_dim": "16",
              "model.pred_depth": "1", "model.pred_heads": "2"}
QUIET = {"training.device": "cpu", "logging.progress": "false", "logging.tensorboard": "false"}
SMALL_BASE = {**TINY_MODEL, "masks.min_keep": "4", "training.epochs": "1", **QUIET}
