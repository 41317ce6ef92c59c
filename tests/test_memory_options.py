"""model.grad_checkpointing, model.drop_path and model.layer_scale: what they change and what they leave alone."""
import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from jepa.config import ConfigError, load_config
from jepa.data import Batch
from jepa.losses import LN_EPS, expand_targets, level_losses
from jepa.models import build_model
from jepa.models.vit import Block, DropPath, LayerScale, Predictor, VisionTransformer, drop_path_rates
from jepa_kernels import masked_target_loss

TINY = {"model.embed_dim": "32", "model.depth": "3", "model.num_heads": "2", "model.pred_dim": "16",
        "model.pred_depth": "2", "model.pred_heads": "2", "data.batch_size": "4", "training.device": "cpu"}


def config(**over):
    return load_config("configs/quick_validation.yaml", {**TINY, **{k.replace("__", "."): str(v) for k, v in over.items()}})


def batch(cfg, n_ctx=20, n_tgt=6):
    """A fixed batch: 4 images, one context mask, 4 target blocks of 2x3 tokens."""
    b, grid = cfg.data.batch_size, cfg.data.image_size // cfg.model.patch_size
    images = torch.randn(b, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    perm = torch.rand(b, grid * grid).argsort(-1)
    ctx = perm[:, :n_ctx].sort(-1).values.unsqueeze(0)
    tgt = perm[:, n_ctx:n_ctx + 4 * n_tgt].view(b, 4, n_tgt).transpose(0, 1).contiguous()
    return Batch(images, torch.zeros(b, dtype=torch.long), ctx, tgt, (2, 3))


def loss_and_grads(cfg, state, data, seed=1):
    model = build_model(cfg)
    model.load_state_dict(state)
    torch.manual_seed(seed)  # drop path draws its masks from here
    with torch.no_grad():
        h = model.target_encoder(data.images)
    _, preds = model(data.images, data.ctx_idx, data.tgt_idx, data.block_hw)
    tgt_idx = expand_targets(data.tgt_idx, data.ctx_idx.shape[0])
    level0 = masked_target_loss(preds[0], h, tgt_idx, cfg.loss.type, cfg.loss.beta, eps=LN_EPS)
    loss, _ = level_losses(level0, preds, h, tgt_idx, data.block_hw, cfg.loss)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_checkpointing_gives_the_same_loss_and_gradients(one_thread, drop_path):
    """Recomputing the activations in backward (same random drop-path masks) changes no bit."""
    torch.manual_seed(0)
    cfg = config(model__drop_path=drop_path)
    state = build_model(cfg).state_dict()
    data = batch(cfg)
    loss, grads = loss_and_grads(cfg, state, data)
    loss_ckpt, grads_ckpt = loss_and_grads(config(model__drop_path=drop_path, model__grad_checkpointing=True),
                                           state, data)
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        assert torch.equal(grads[name], grads_ckpt[name]), name


def activation_bytes(module, *inputs) -> int:
    """Bytes the forward leaves allocated (what backward will read), from the profiler's CPU memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = module(*inputs)
    del out
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = [e["args"] for e in json.load(open(f.name))["traceEvents"] if e.get("name") == "[memory]"]
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return events[-1]["Total Allocated"] - start


def test_checkpointing_keeps_only_block_inputs(one_thread):
    """A 12-block encoder keeps ~16 token-tensors of activations per block for backward; checkpointed, only each
    block's input (plus the embedding's and the final norm's few), a factor > 10 less."""
    depth, dim, b = 12, 64, 8
    x = torch.randn(b, 3, 32, 32)
    tokens = b * 64 * dim * 4  # bytes of one [B, N, D] fp32 token tensor (8x8 patches)
    kept = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        kept[ckpt] = activation_bytes(VisionTransformer(32, 4, 3, dim, depth, 2, grad_checkpointing=ckpt), x) / tokens
    assert depth <= kept[True] <= depth + 4
    assert kept[False] >= 12 * depth
    assert kept[False] / kept[True] > 10


def test_checkpointed_predictor_keeps_only_block_inputs(one_thread):
    depth, b, kc, kt = 8, 4, 30, 6
    pred_kwargs = dict(grid=(8, 8), embed_dim=32, pred_dim=64, depth=depth, num_heads=2)
    ctx = torch.randn(b, kc, 32, requires_grad=True)
    ctx_idx = torch.rand(1, b, 64).argsort(-1)[..., :kc]
    tgt_idx = torch.rand(4, b, 64).argsort(-1)[..., :kt]
    rows = 4 * b * (kc + kt) * 64 * 4  # bytes of the predictor's [M·B, Kc + Kt, P] token tensor
    kept = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        kept[ckpt] = activation_bytes(Predictor(**pred_kwargs, grad_checkpointing=ckpt), ctx, ctx_idx, tgt_idx) / rows
    assert depth - 1 <= kept[True] <= depth + 3
    assert kept[False] / kept[True] > 8


def test_drop_path_is_linear_over_depth_and_identity_in_eval():
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.2, 1) == [0.0]
    torch.manual_seed(0)
    plain = VisionTransformer(16, 4, 3, 32, 4, 2)
    dropped = VisionTransformer(16, 4, 3, 32, 4, 2, drop_path=0.5)
    dropped.load_state_dict(plain.state_dict())
    assert [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in dropped.blocks] == \
        pytest.approx(drop_path_rates(0.5, 4))
    x = torch.randn(6, 3, 16, 16)
    dropped.eval()
    assert torch.equal(dropped(x), plain(x))
    dropped.train()
    assert not torch.equal(dropped(x), plain(x))


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = DropPath(0.25)
    x = torch.ones(4000, 3, 5)
    y = drop(x)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert abs(y.mean().item() - 1.0) < 0.05


def test_target_encoder_never_drops_paths():
    model = build_model(config(model__drop_path=0.4))
    online = [m.p for m in model.context_encoder.modules() if isinstance(m, DropPath)]
    assert online and max(online) == pytest.approx(0.4)
    assert all(m.p == 0.0 for m in model.target_encoder.modules() if isinstance(m, DropPath))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model.target_encoder(x), model.target_encoder(x))  # in training mode too


def test_layer_scale_starts_at_its_value_and_scales_each_branch():
    torch.manual_seed(0)
    plain, scaled = Block(24, 3), Block(24, 3, layer_scale=1e-3)
    scaled.load_state_dict(plain.state_dict(), strict=False)
    gammas = [m.gamma for m in scaled.modules() if isinstance(m, LayerScale)]
    assert len(gammas) == 2 and all(torch.equal(g, torch.full((24,), 1e-3)) for g in gammas)
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        x1 = x + 1e-3 * plain.attn(plain.norm1(x))
        expected = x1 + 1e-3 * plain.mlp(plain.norm2(x1))
        torch.testing.assert_close(scaled(x), expected)


def test_defaults_add_no_parameters_and_layer_scale_is_exported():
    plain = build_model(config())
    options = build_model(config(model__drop_path=0.1, model__grad_checkpointing=True))
    assert plain.state_dict().keys() == options.state_dict().keys()
    scaled = build_model(config(model__layer_scale=1e-5))
    extra = scaled.state_dict().keys() - plain.state_dict().keys()
    assert extra and all(k.endswith(".gamma") for k in extra)
    from jepa.models import encoder_spec
    assert "layer_scale" not in encoder_spec(config()) and encoder_spec(config(model__layer_scale=1e-5))["layer_scale"] == 1e-5


@pytest.mark.parametrize("key,value,words", [
    ("model.drop_path", "1.0", "[0, 0.99]"), ("model.drop_path", "-0.1", "[0, 0.99]"),
    ("model.layer_scale", "0", "(0, 1000]"), ("model.layer_scale", "false", "null"),
    ("model.grad_checkpointing", "sometimes", "true or false"),
])
def test_bad_values_name_the_key(key, value, words):
    with pytest.raises(ConfigError) as err:
        load_config("configs/quick_validation.yaml", {key: value})
    assert key in str(err.value) and words in str(err.value)
