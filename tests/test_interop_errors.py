"""Every bad file given as weights is one line naming the file and what was expected; nothing is unpickled."""
import json
import pathlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import jepa
from jepa.checkpoint import CheckpointError
from jepa.config import load_config
from jepa.export import main as export_main
from jepa.interop.safetensors_io import write_safetensors
from jepa.models import build_model

from interop_helpers import SMALL, make_checkpoint, official_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class WouldRunCode:
    """Unpickling this creates ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    _, ckpt = make_checkpoint(tmp / "run")
    export = tmp / "enc.safetensors"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(export)]) == 0
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp / "hf"), "--format", "hf"]) == 0
    return tmp, ckpt, export


def _make(kind, tmp, ckpt, export):
    """Write one bad file of ``kind``; returns its path and a regex of what the error must say."""
    path = tmp / kind
    if kind == "foreign.pt":
        torch.save({"weight": torch.zeros(2)}, path)
        return path, r"is not a format jepa reads \(found \['weight'\]\); expected a jepa training checkpoint"
    if kind == "truncated.pth.tar":
        raw = official_checkpoint(build_model(load_config(None, SMALL)))
        torch.save(raw, tmp / "whole.pth.tar")
        path.write_bytes((tmp / "whole.pth.tar").read_bytes()[:3000])
        return path, "cannot read checkpoint .*: the file is corrupt or truncated"
    if kind == "truncated.safetensors":
        path.write_bytes(export.read_bytes()[:-100])
        return path, "cannot read .*: not a valid safetensors file, it is corrupt or truncated"
    if kind == "code.pth.tar":
        torch.save({"encoder": WouldRunCode(tmp / "ran")}, path)
        return path, r"holds pickled Python objects: refused"
    if kind == "no_config_dir":
        path.mkdir()
        (path / "model.safetensors").write_bytes(export.read_bytes())
        return path, "is a directory without config.json; expected"
    if kind == "vit_dir":
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
        return path, r"config.json: model_type is 'vit', expected 'ijepa'"
    if kind == "no_weights_dir":
        path.mkdir()
        (path / "config.json").write_text((tmp / "hf" / "config.json").read_text())
        return path, "holds config.json but no weights \\(expected model.safetensors"
    if kind == "broken_json_dir":
        path.mkdir()
        (path / "config.json").write_text("{not json")
        return path, "config.json: not readable JSON"
    if kind == "unknown.safetensors":
        save_file({"w": torch.zeros(3)}, path)
        return path, "is a safetensors file jepa does not know .*found w"
    if kind == "not_tensors.pth.tar":
        torch.save({"encoder": {"module.patch_embed.proj.weight": [1, 2]}}, path)
        return path, "the 'encoder' state dict is not a state dict of tensors"
    if kind == "wrong_spec.safetensors":
        with safe_open(str(export), "pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        meta["spec"] = json.dumps({**json.loads(meta["spec"]), "depth": 3})
        write_safetensors(path, tensors, meta)  # consistent, so its content is what fails
        return path, r"the encoder weights do not match the model's keys \(missing blocks.2"
    if kind == "bad_spec.safetensors":
        with safe_open(str(export), "pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        meta["spec"] = json.dumps({k: v for k, v in json.loads(meta["spec"]).items() if k != "depth"})
        write_safetensors(path, tensors, meta)  # consistent, so its content is what fails
        return path, "its encoder spec must have the keys img_size, patch_size, in_chans, embed_dim, depth"
    if kind == "bad_heads_dir":
        path.mkdir()
        config = json.loads((tmp / "hf" / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3}))
        (path / "model.safetensors").write_bytes((tmp / "hf" / "model.safetensors").read_bytes())
        return path, "does not describe a buildable encoder"
    if kind == "wide_table.safetensors":
        with safe_open(str(export), "pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        write_safetensors(path, {**tensors, "pos_embed": torch.zeros(1, 50, 32)}, meta)
        return path, "position table has 50 positions, not the 7x7 grid"
    if kind == "missing.pth.tar":
        return path, "checkpoint not found"
    raise AssertionError(kind)


KINDS = ["foreign.pt", "truncated.pth.tar", "truncated.safetensors", "code.pth.tar", "no_config_dir", "vit_dir",
         "no_weights_dir", "broken_json_dir", "unknown.safetensors", "not_tensors.pth.tar", "wrong_spec.safetensors",
         "bad_spec.safetensors", "bad_heads_dir", "wide_table.safetensors", "missing.pth.tar"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_file_is_one_line_naming_it(files, kind):
    path, expected = _make(kind, *files)
    with pytest.raises(CheckpointError, match=expected) as e:
        jepa.load_encoder(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    assert not (files[0] / "ran").exists(), "a pickled callable ran"


def test_the_same_errors_reach_init_from_and_the_commands(files, tmp_path, capsys):
    from jepa.eval import main as eval_main
    from jepa.train import Trainer
    path, expected = _make("vit_dir", tmp_path, *files[1:])
    with pytest.raises(CheckpointError, match=expected):
        Trainer(load_config(None, {**SMALL, "model.init_from": str(path)}), run_dir=tmp_path / "run")
    for command in (export_main, eval_main):
        assert command(["--checkpoint", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}/config.json: model_type is 'vit'") and "\n" not in err
