"""Pictures: the mask overlay marks exactly the sampled cells, the PCA map recovers a known function of position,
sizes, determinism for a seed, and TensorBoard images during training that leave the run's numbers alone."""
import pytest
import torch
from PIL import Image

from jepa import drawing as pic
from jepa import visualize as viz
from jepa.config import ConfigError, load_config
from jepa.masks import MaskSampler
from jepa.train import Trainer

from small_config import own_data_root_run_checkpoint, stopped_run_checkpoint

SMALL = {"model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2", "model.pred_dim": "16",
         "model.pred_depth": "1", "model.pred_heads": "2", "masks.min_keep": "4", "data.batch_size": "32",
         "data.subset": "128", "training.epochs": "1", "logging.progress": "false", "logging.tensorboard": "false",
         "training.device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return stopped_run_checkpoint(tmp_path_factory, SMALL)


def expected_overlay(image, grid, context, blocks):
    """The overlay computed pixel by pixel from its definition, independently of the vectorised code."""
    cell = image.shape[0] // grid[0]
    t = pic.outline_width(cell)
    out = image.clone()
    ctx = set(context.tolist())
    tint = torch.tensor(pic.CONTEXT_TINT, dtype=torch.float32)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            if (y // cell) * grid[1] + x // cell in ctx:
                out[y, x] = ((1 - pic.TINT_ALPHA) * image[y, x].float() + pic.TINT_ALPHA * tint).round().to(torch.uint8)
    for m, block in enumerate(blocks):
        rows, cols = block // grid[1], block % grid[1]
        top, left, bottom, right = (int(rows.min()) * cell, int(cols.min()) * cell, (int(rows.max()) + 1) * cell,
                                    (int(cols.max()) + 1) * cell)
        for y in range(top, bottom):
            for x in range(left, right):
                if y < top + t or y >= bottom - t or x < left + t or x >= right - t:
                    out[y, x] = torch.tensor(pic.BLOCK_COLOURS[m % len(pic.BLOCK_COLOURS)], dtype=torch.uint8)
    return out


def test_mask_overlay_colours_exactly_the_sampled_cells():
    grid = (7, 7)
    sampler = MaskSampler(grid, min_keep=4)
    ctx, tgt = sampler.sample(3, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for i in range(3):
        image = torch.randint(0, 256, (7 * 12, 7 * 12, 3), dtype=torch.uint8, generator=g)
        blocks = [t[i] for t in tgt]
        got = pic.mask_overlay(image, grid, ctx[0][i], blocks)
        assert torch.equal(got, expected_overlay(image, grid, ctx[0][i], blocks))
        # read back from the picture: a cell's centre is tinted exactly when the sampler put it in the context
        # (targets and context are disjoint, so no outline covers a context cell's centre)
        centres = got[6::12, 6::12].reshape(-1, 3)
        tinted = ~(centres == image[6::12, 6::12].reshape(-1, 3)).all(1)
        assert tinted.nonzero().squeeze(1).tolist() == sorted(ctx[0][i].tolist())
        # every block's colour sits on the edge of that block's cells and nowhere else
        last = blocks[-1]
        colour = torch.tensor(pic.BLOCK_COLOURS[len(blocks) - 1], dtype=torch.uint8)
        hits = (got == colour).all(-1).nonzero()
        rows, cols = hits[:, 0] // 12, hits[:, 1] // 12
        assert set((rows * 7 + cols).tolist()) <= set(last.tolist())


def test_mask_overlay_rejects_a_size_that_is_not_the_grid():
    with pytest.raises(ValueError, match="patch grid"):
        pic.mask_overlay(torch.zeros(30, 30, 3, dtype=torch.uint8), (7, 7), torch.tensor([0]), [])


def test_pca_map_reproduces_a_known_function_of_position():
    gh, gw, d, n = 6, 5, 24, 3
    r, c = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                          indexing="ij")
    # three uncorrelated functions of position with decreasing variance, mixed into D dims by a rotation
    funcs = torch.stack([3.0 * (r - r.mean()), 1.0 * (c - c.mean()), 0.3 * (r - r.mean()) * (c - c.mean())], -1)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    feats = (funcs @ q[:3]).expand(n, gh, gw, d) + 5.0  # the same for every image, plus a constant offset
    rgb = pic.pca_rgb(feats.float())
    assert rgb.shape == (n, gh, gw, 3) and rgb.dtype == torch.uint8
    assert all(torch.equal(rgb[0], rgb[i]) for i in range(n))
    for ch in range(3):
        f = funcs[..., ch]
        want = ((f - f.min()) / (f.max() - f.min()) * 255).round().to(torch.uint8)
        got = rgb[0, ..., ch].int()
        off = min((got - want.int()).abs().max(), (got - (255 - want.int())).abs().max())
        assert off <= 1, f"channel {ch}"  # exact up to rounding at a half level


def test_pca_map_of_features_that_vary_in_one_direction_leaves_the_rest_black():
    t = torch.arange(12, dtype=torch.float32).view(1, 3, 4, 1) * torch.ones(1, 3, 4, 8)
    rgb = pic.pca_rgb(t)
    assert rgb[..., 1:].eq(0).all() and rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255


def test_picture_sizes(checkpoint, tmp_path):
    written = viz.visualize(checkpoint, out=tmp_path, images=4, queries=3, neighbours=5, gallery=200)
    assert set(written) == {"masks", "features", "retrieval"}
    tile = 28 * 3 + 12  # 28-px images shown 3x, with a 12-px caption
    sizes = {k: Image.open(p).size for k, p in written.items()}
    # masks: one training batch (32) -> the first 16, 8 per row, 84-px tiles, 4-px gaps
    assert sizes["masks"] == (8 * 84 + 9 * 4, 2 * 84 + 3 * 4)
    # features: image | trained | random init (2-px gaps) per image, 2 per row, 8-px gaps
    row = 3 * 84 + 2 * 2
    assert sizes["features"] == (2 * row + 3 * 8, 2 * tile + 3 * 8)
    # retrieval: query + 5 neighbours per row (4-px gaps), one row per query (6-px gaps)
    assert sizes["retrieval"] == (6 * 84 + 5 * 4 + 2 * 6, 3 * tile + 4 * 6)


def test_pictures_are_deterministic_for_a_seed(checkpoint, tmp_path):
    kw = dict(images=2, queries=2, neighbours=2, gallery=100)
    a = viz.visualize(checkpoint, out=tmp_path / "a", **kw)
    b = viz.visualize(checkpoint, out=tmp_path / "b", **kw)
    c = viz.visualize(checkpoint, out=tmp_path / "c", seed=5, **kw)
    for kind in a:
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind
    assert a["masks"].read_bytes() != c["masks"].read_bytes()


def test_visualize_cli(checkpoint, tmp_path, capsys):
    assert viz.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path), "--only", "masks,retrieval",
                     "--gallery", "100", "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.png", "retrieval.png"]
    assert "wrote" in capsys.readouterr().out
    assert viz.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        viz.main(["--checkpoint", str(checkpoint), "--only", "masks,colours"])


def test_a_negative_epoch_is_refused(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        viz.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "p"), "--epoch", "-3"])
    assert stop.value.code == 2 and "error: --epoch must be >= 0, got -3" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--epoch must be >= 0"):
        viz.visualize(checkpoint, out=tmp_path / "p", epoch=-1)
    assert not (tmp_path / "p").exists()


def test_pictures_find_the_data_where_the_run_did(tmp_path_factory, tmp_path, monkeypatch, capsys):
    checkpoint, root = own_data_root_run_checkpoint(tmp_path_factory)
    monkeypatch.delenv("JEPA_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/imagefolder: only the run's data.root holds the images
    assert viz.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "p"), "--only", "retrieval",
                     "--gallery", "20", "--device", "cpu"]) == 0
    assert (tmp_path / "p" / "retrieval.png").is_file()
    assert viz.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "q"), "--only", "retrieval",
                     "--data-root", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "nowhere" in capsys.readouterr().err


def tb_images(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    ea.Reload()
    return {tag: [e.step for e in ea.Images(tag)] for tag in ea.Tags()["images"]}


def test_tensorboard_pictures_at_checkpoint_epochs_change_nothing_in_the_run(tmp_path):
    over = {**SMALL, "training.epochs": "3", "checkpoint.every_epochs": "2", "logging.log_every": "2"}
    plain = Trainer(load_config(None, {**over, "logging.rankme_batch": "0"}), run_dir=tmp_path / "plain")
    plain.train()
    shown = Trainer(load_config(None, {**over, "logging.tensorboard": "true"}), run_dir=tmp_path / "shown")
    shown.train()
    steps = tb_images(tmp_path / "shown")
    assert set(steps) == {"pictures/masks", "pictures/features", "pictures/retrieval"}
    assert all(s == [8, 12] for s in steps.values()), steps  # 4 steps an epoch; checkpoints after epochs 2 and 3
    for (name, a), b in zip(plain.model.state_dict().items(), shown.model.state_dict().values()):
        assert torch.equal(a, b), f"{name} changed by pictures or RankMe"

    every = Trainer(load_config(None, {**over, "logging.tensorboard": "true", "logging.images_every_epochs": "1"}),
                    run_dir=tmp_path / "every")
    every.train()
    assert tb_images(tmp_path / "every")["pictures/masks"] == [4, 8, 12]


def test_pictures_follow_the_precision_rule(checkpoint, tmp_path, monkeypatch):
    """``auto`` draws the feature pictures in bf16 where the (forced) CPU probe finds bf16 matrix units."""
    seen = []
    real = viz.patch_features
    monkeypatch.setattr(viz, "patch_features", lambda enc, x, amp_dtype=torch.float32: seen.append(amp_dtype)
                        or real(enc, x, amp_dtype))
    kw = dict(images=2, queries=2, neighbours=2, gallery=50, only=("features",))
    for forced, precision, dtype in (("1", "auto", torch.bfloat16), ("0", "auto", torch.float32),
                                     ("1", "fp32", torch.float32)):
        monkeypatch.setenv("JEPA_CPU_BF16", forced)
        seen.clear()
        viz.visualize(checkpoint, out=tmp_path / f"{forced}{precision}", precision=precision, **kw)
        assert seen and set(seen) == {dtype}
