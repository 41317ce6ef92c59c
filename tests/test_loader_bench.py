"""bench/loader.py: its reference pipeline crops like ours, and a quick run writes the JSON and markdown keys."""
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import loader  # noqa: E402
from jepa.data.crops import sample_box  # noqa: E402


def test_reference_pipeline_draws_the_same_crop_distribution_as_ours():
    torch.manual_seed(0)
    n, rng = 10_000, random.Random(0)
    ref = [loader.reference_box(500, 375) for _ in range(n)]
    ours = [sample_box(500, 375, loader.SCALE, loader.RATIO, rng)[0] for _ in range(n)]
    threshold = 1.949 * math.sqrt(2 / n)  # two-sample KS, alpha = 0.001
    for a, b in ((np.array([w * h for _, _, w, h in ref]), np.array([b.width * b.height for b in ours])),
                 (np.log([w / h for _, _, w, h in ref]), np.log([b.width / b.height for b in ours]))):
        a, b = np.sort(a), np.sort(b)
        points = np.concatenate([a, b])
        gap = np.abs(np.searchsorted(a, points, "right") / n - np.searchsorted(b, points, "right") / n).max()
        assert gap < threshold


def test_quick_run_writes_the_table_and_keys(tmp_path, capsys):
    out = tmp_path / "loader.json"
    assert loader.main(["--quick", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    for key in ("device", "cpu_features", "pillow", "libjpeg_turbo", "settings", "rows", "reduced_decode_fraction",
                "vitb16_images_per_s", "vitb16_source", "workers_to_feed_vitb16", "table"):
        assert key in record, key
    pipelines = [r["pipeline"] for r in record["rows"]]
    assert pipelines == ["reference", "ours, folder", "ours, folder, full decode", "ours, shards"]
    assert all(r["images_per_s"] > 0 and r["workers"] == 1 for r in record["rows"])
    assert record["workers_to_feed_vitb16"] >= 1 and 0 <= record["reduced_decode_fraction"] <= 1
    md = out.with_suffix(".md").read_text()
    assert "| reference | 1 |" in md and "1.00x" in md and "ViT-B/16" in md
    assert (tmp_path / "cache").is_dir() and "images/s" in capsys.readouterr().out
