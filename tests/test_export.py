"""Encoder export: a safetensors file (no pickle) that rebuilds the target encoder with identical outputs."""
import json

import pytest
import torch
from safetensors import safe_open

import jepa
from jepa.checkpoint import ENCODER_FORMAT, CheckpointError, checkpoint_path, load_checkpoint
from jepa.config import load_config
from jepa.export import load_encoder, main, read_encoder
from jepa.train import Trainer

from small_config import SMALL_BASE

SMALL = {**SMALL_BASE, "data.batch_size": "32", "data.subset": "128", "training.stop_at_step": "2"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    trainer = Trainer(load_config(None, SMALL), run_dir=run)
    trainer.train()
    return trainer, checkpoint_path(run, 2)


def test_export_round_trip_gives_identical_outputs(trained, tmp_path, capsys):
    trainer, ckpt = trained
    out = tmp_path / "encoder.safetensors"
    assert main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "tokens [B, 49, 32]" in capsys.readouterr().out and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.safetensors"]
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert "pos_embed" not in f.keys(), "our sin-cos table is recomputed, not stored"
    assert meta["format"] == "jepa-encoder-v2"
    assert json.loads(meta["spec"]) == {"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 32,
                                        "depth": 2, "num_heads": 2, "mlp_ratio": 4.0}
    assert json.loads(meta["step"]) == 2 and json.loads(meta["encoder"]) == "target"
    encoder = jepa.load_encoder(out)
    assert isinstance(encoder, torch.nn.Module) and not encoder.training
    assert encoder.normalization == {"mean": [0.286], "std": [0.353]}
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = trainer.model.target_encoder.eval()(x)
        got = encoder(x)
    assert got.shape == (5, 49, 32) and torch.equal(got, expected)
    ctx = trainer.model.context_encoder
    assert not all(torch.equal(a, b) for a, b in zip(ctx.parameters(), encoder.parameters())), \
        "after training the target encoder must differ from the context encoder, or the test proves nothing"


@pytest.mark.parametrize("name", ["encoder.pt", "encoder.pth"])
def test_out_is_exactly_the_path_written_and_a_pt_name_writes_a_torch_file(trained, tmp_path, capsys, name):
    trainer, ckpt = trained
    out = tmp_path / name
    assert main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert f"wrote {out}:" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [name]
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == ENCODER_FORMAT and raw["step"] == 2 and "checksum" in raw
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_encoder(out)(x), trainer.model.target_encoder.eval()(x))


def test_hf_is_the_format_of_a_name_without_suffix(trained, tmp_path):
    _, ckpt = trained
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "enc_hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "enc_hf").iterdir()) == ["config.json", "model.safetensors",
                                                                       "preprocessor_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["enc_hf"]


@pytest.mark.parametrize("out, fmt, words", [
    ("enc.pt", "timm", "--out {out} has the suffix .pt but --format timm writes a .safetensors file"),
    ("enc.safetensors", "hf", "--out {out} names a .safetensors file but --format hf writes a directory"),
    ("enc", "jepa", "--out {out} has no suffix (a directory, --format hf) but --format jepa writes a "
                    ".safetensors or .pt or .pth file"),
    ("enc.bin", None, "--out {out}: the suffix .bin names no export format"),
])
def test_a_suffix_that_contradicts_the_format_is_an_error_naming_both(trained, tmp_path, capsys, out, fmt, words):
    _, ckpt = trained
    out = tmp_path / out
    assert main(["--checkpoint", str(ckpt), "--out", str(out)] + (["--format", fmt] if fmt else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {words.format(out=out)}") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("heads", ["0", "-3"])
def test_a_non_positive_num_heads_is_an_error_naming_the_flag(trained, tmp_path, capsys, heads):
    _, ckpt = trained
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "e.safetensors"), "--num-heads", heads]) == 2
    assert capsys.readouterr().err == f"error: --num-heads must be a positive divisor of the encoder width, got {heads}\n"


def test_num_heads_other_than_the_stored_count_is_an_error(trained, tmp_path, capsys):
    _, ckpt = trained
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "e.safetensors"), "--num-heads", "4"]) == 2
    assert f"error: --num-heads 4: {ckpt} stores its head count (2)" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "e.safetensors"), "--num-heads", "2"]) == 0


def test_old_pt_exports_still_load(trained, tmp_path):
    """A v1 export (torch.save of tensors and primitives) from before the safetensors format reads as before."""
    trainer, ckpt = trained
    enc = read_encoder(ckpt)
    old = tmp_path / "old.pt"
    torch.save({"format": ENCODER_FORMAT, "source": str(ckpt), **{k: enc[k] for k in (
        "weights", "spec", "normalization", "config", "step", "encoder")}}, old)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_encoder(old)(x), trainer.model.target_encoder.eval()(x))
    assert read_encoder(old)["step"] == 2


def test_export_context_encoder_and_load_from_training_checkpoint(trained, tmp_path):
    trainer, ckpt = trained
    out = tmp_path / "context.safetensors"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--encoder", "context"]) == 0
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_encoder(out, which="context")(x),
                           trainer.model.context_encoder.eval()(x))
        assert torch.equal(load_encoder(ckpt)(x), trainer.model.target_encoder.eval()(x))
    with pytest.raises(CheckpointError, match="export of the context encoder"):
        load_encoder(out)


def test_export_errors_name_the_file(trained, tmp_path, capsys):
    _, ckpt = trained
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:500])
    assert main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.pt")]) == 2
    assert str(bad) in capsys.readouterr().err and not list(tmp_path.glob("x.*"))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt is not a format jepa reads"):
        load_encoder(foreign)
    out = tmp_path / "enc.safetensors"
    main(["--checkpoint", str(ckpt), "--out", str(out)])
    with pytest.raises(CheckpointError, match="enc.safetensors is a safetensors file.*not a training checkpoint"):
        load_checkpoint(out)


def test_evaluation_accepts_an_exported_encoder(trained, tmp_path):
    from jepa.eval import evaluate
    _, ckpt = trained
    out = tmp_path / "encoder.safetensors"
    main(["--checkpoint", str(ckpt), "--out", str(out)])
    kw = dict(protocol="knn", train_subset=200, test_subset=50, cache=False, progress=False)
    from_export = evaluate(out, out=tmp_path / "a.json", **kw)
    from_ckpt = evaluate(ckpt, out=tmp_path / "b.json", **kw)
    assert from_export["step"] == 2
    assert from_export["results"]["pretrained"]["knn"] == from_ckpt["results"]["pretrained"]["knn"]


CHILD = """
import sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from jepa.export import main
try:
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on
except OSError:
    pass
base = status("VmHWM")
code = main(sys.argv[1:])
print(code, status("VmHWM") - base)
"""


def _official_vit(path, dim=512, depth=20, patch=4, grid=8):
    """An official-layout checkpoint of a 63M-parameter encoder (a 250 MB file), random weights."""
    g = torch.Generator().manual_seed(0)
    shapes = {"patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
              "pos_embed": (1, grid * grid, dim), "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        for name, shape in (("norm1", (dim,)), ("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim)),
                            ("norm2", (dim,)), ("mlp.fc1", (4 * dim, dim)), ("mlp.fc2", (dim, 4 * dim))):
            shapes[f"blocks.{i}.{name}.weight"] = shape
            shapes[f"blocks.{i}.{name}.bias"] = (shape[0],)
    state = {f"module.{k}": torch.randn(shape, generator=g) for k, shape in shapes.items()}
    torch.save({"target_encoder": state}, path)
    return sum(t.numel() * 4 for t in state.values())


@pytest.mark.parametrize("out, fmt", [("enc.safetensors", "jepa"), ("enc_hf", "hf")])
def test_export_peak_memory_stays_near_the_exported_weights(tmp_path, out, fmt):
    """The source is memory-mapped and written one tensor at a time: no model, no in-memory file, no second copy
    to read back. Before, a 250 MB encoder peaked 1.0-1.1 GB above the start; the bound is 1.2x the weights plus
    the mapped file."""
    import subprocess
    import sys
    source = tmp_path / "vit.pth.tar"
    weights = _official_vit(source)
    done = subprocess.run([sys.executable, "-c", CHILD, "--checkpoint", str(source), "--out", str(tmp_path / out),
                           "--format", fmt, "--num-heads", "8"], capture_output=True, text=True, timeout=120)
    code, peak = map(int, done.stdout.split()[-2:])
    assert code == 0, done.stderr
    assert peak <= 1.2 * weights + source.stat().st_size, f"peak {peak / 1e6:.0f} MB for {weights / 1e6:.0f} MB"
    if fmt == "jepa":
        enc = load_encoder(tmp_path / out)
        assert enc.embed_dim == 512 and len(enc.blocks) == 20
