"""Hugging Face transformers ``IJepaModel`` directories: ``config.json``, ``model.safetensors``, a preprocessor config.

We write the weight names of the published ``facebook/ijepa_*`` checkpoints (``encoder.layer.i.attention.
attention.query``, ...): transformers 4.x loads them as they are and 5.x renames them on load. Both those and
5.x's own names (``layers.i.attention.q_proj``, ...) are read.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from jepa.checkpoint import CheckpointError, load_file
from jepa.interop.layout import as_float_tensors, check_spec, imagenet_normalization, mlp_ratio_of, strip_prefix
from jepa.interop.safetensors_io import metadata_json, read_safetensors, write_safetensors
from jepa.io import atomic_dir, atomic_write_text, is_safetensors

log = logging.getLogger("jepa")

HF_FORMAT = "jepa-hf-v1"  # tag in our model.safetensors header, beside the metadata that rebuilds our config
FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
# per layer: legacy (transformers 4.x, published checkpoints) and 5.x names -> ours
_LAYER_NAMES = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_QKV = {"attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2,
        "attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2}
_IGNORED = ("embeddings.mask_token", "pooler.", "classifier.")


# ---------------------------------------------------------------- export


def to_hf(weights: dict, spec: dict) -> dict:
    """Our encoder weights (with ``pos_embed``) in the published IJepaModel names; qkv split into q, k, v."""
    dim = spec["embed_dim"]
    out = {"embeddings.patch_embeddings.projection.weight": weights["patch_embed.weight"],
           "embeddings.patch_embeddings.projection.bias": weights["patch_embed.bias"],
           "embeddings.position_embeddings": weights["pos_embed"],
           "layernorm.weight": weights["norm.weight"], "layernorm.bias": weights["norm.bias"]}
    for i in range(spec["depth"]):
        ours, hf = f"blocks.{i}.", f"encoder.layer.{i}."
        for name, part in (("query", 0), ("key", 1), ("value", 2)):
            for kind in ("weight", "bias"):
                qkv = weights[f"{ours}attn.qkv.{kind}"]
                out[f"{hf}attention.attention.{name}.{kind}"] = qkv[part * dim:(part + 1) * dim]  # a view: written, not copied
        for hf_name, our_name in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                                  ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                                  ("output.dense", "mlp.fc2")):
            for kind in ("weight", "bias"):
                out[f"{hf}{hf_name}.{kind}"] = weights[f"{ours}{our_name}.{kind}"]
    return out


def hf_config(spec: dict) -> dict:
    """``config.json`` of an ``IJepaModel`` computing exactly our encoder (LayerNorm eps 1e-6, exact GELU)."""
    return {"architectures": ["IJepaModel"], "model_type": "ijepa", "hidden_size": spec["embed_dim"],
            "num_hidden_layers": spec["depth"], "num_attention_heads": spec["num_heads"],
            "intermediate_size": int(spec["embed_dim"] * spec["mlp_ratio"]), "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-6, "image_size": spec["img_size"], "patch_size": spec["patch_size"],
            "num_channels": spec["in_chans"], "qkv_bias": True, "torch_dtype": "float32"}


def preprocessor_config(spec: dict, normalization: dict) -> dict:
    """A ``ViTImageProcessor`` config (what transformers uses for I-JEPA) with our training normalisation."""
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
            "size": {"height": spec["img_size"], "width": spec["img_size"]}, "resample": 2, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(normalization["mean"]),
            "image_std": list(normalization["std"])}


def is_our_hf_dir(path: Path) -> bool:
    """An earlier ``--format hf`` export (which a new one may replace): only our files, an ijepa config."""
    try:
        names = {p.name for p in path.iterdir()}
        return names <= set(FILES) and json.loads((path / "config.json").read_text()).get("model_type") == "ijepa"
    except (OSError, ValueError, AttributeError):
        return False


def write_hf_dir(out: Path, weights: dict, spec: dict, normalization: dict, meta: dict) -> Path:
    """The ``IJepaModel`` directory ``out``, written whole or not at all; ``meta`` (our config, step) goes in the
    safetensors header so ``model.init_from`` recovers it."""
    header = {"format": "pt", "jepa_format": HF_FORMAT,
              **{k: json.dumps(v) for k, v in meta.items()}, "normalization": json.dumps(normalization)}
    with atomic_dir(out, replaceable=is_our_hf_dir) as tmp:
        write_safetensors(tmp / "model.safetensors", to_hf(weights, spec), header)
        atomic_write_text(tmp / "config.json", json.dumps(hf_config(spec), indent=2) + "\n")
        atomic_write_text(tmp / "preprocessor_config.json",
                          json.dumps(preprocessor_config(spec, normalization), indent=2) + "\n")
    return out


# ---------------------------------------------------------------- import


def from_hf(state: dict, config: dict, path: Path) -> dict:
    """An IJepaModel state dict (either naming, optional ``ijepa.`` prefix) in our names, q/k/v fused."""
    state = strip_prefix(state, "ijepa.")
    out, qkv, left = {}, {}, []
    for key, value in state.items():
        if key.startswith(_IGNORED):
            continue
        if key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed." + key.rsplit(".", 1)[1]] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif (m := _LAYER.match(key)) and "." in m.group(2):
            i, (name, kind) = m.group(1), m.group(2).rsplit(".", 1)
            if name in _QKV:
                qkv.setdefault((i, kind), [None] * 3)[_QKV[name]] = value
            elif name in _LAYER_NAMES:
                out[f"blocks.{i}.{_LAYER_NAMES[name]}.{kind}"] = value
            else:
                left.append(key)
        else:
            left.append(key)
    if left:
        raise CheckpointError(f"{path}: weights an IJepaModel does not have: {', '.join(left[:4])}"
                              + (f" and {len(left) - 4} more" if len(left) > 4 else ""))
    for (i, kind), parts in qkv.items():
        if any(p is None for p in parts) or len({p.shape for p in parts}) != 1:
            raise CheckpointError(f"{path}: layer {i}'s query, key and value {kind}s are not three of one shape")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    if not config.get("qkv_bias", True):  # no biases stored: zeros compute the same
        for (i, kind), parts in list(qkv.items()):
            out.setdefault(f"blocks.{i}.attn.qkv.bias", parts[0].new_zeros(3 * parts[0].shape[0]))
    return out


def _square(value, key: str, path: Path) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{path}/config.json: {key}={value}; only square images and patches are supported")
        value = value[0]
    return int(value)


def spec_from_config(config: dict, path: Path) -> dict:
    """Our encoder spec from an IJepaModel ``config.json``; other architectures are errors naming the key."""
    if config.get("model_type") != "ijepa":
        raise CheckpointError(f"{path}/config.json: model_type is {config.get('model_type')!r}, expected 'ijepa' "
                              "(a transformers IJepaModel directory)")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{path}/config.json: hidden_act {act!r}; only the exact 'gelu' of I-JEPA is supported")
    try:
        eps = float(config.get("layer_norm_eps", 1e-12))
        if abs(eps - 1e-6) > 1e-9:
            log.warning("%s: layer_norm_eps %g, our encoder uses 1e-6: outputs differ slightly from transformers'",
                        path, eps)
        dim = int(config.get("hidden_size", 768))
        return {"img_size": _square(config.get("image_size", 224), "image_size", path),
                "patch_size": _square(config.get("patch_size", 16), "patch_size", path),
                "in_chans": int(config.get("num_channels", 3)), "embed_dim": dim,
                "depth": int(config.get("num_hidden_layers", 12)),
                "num_heads": int(config.get("num_attention_heads", 12)),
                "mlp_ratio": mlp_ratio_of(int(config.get("intermediate_size", 3072)), dim)}
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"{path}/config.json: not a valid IJepaConfig ({e})") from None


def _read_weights(path: Path) -> tuple[dict, dict]:
    """The directory's weights and our metadata: model.safetensors, a sharded index, or pytorch_model.bin."""
    single, index, pickled = path / "model.safetensors", path / "model.safetensors.index.json", \
        path / "pytorch_model.bin"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        state = {}
        for shard in shards:
            state.update(read_safetensors(path / shard)[0])
        return state, {}
    if pickled.is_file():
        state = load_file(pickled)
        if not isinstance(state, dict):
            raise CheckpointError(f"{pickled}: expected a state dict, found {type(state).__name__}")
        return as_float_tensors(state, pickled, "file"), {}
    raise CheckpointError(f"{path} holds config.json but no weights (expected model.safetensors, "
                          "model.safetensors.index.json or pytorch_model.bin)")


def read_hf_config(path: Path) -> tuple[dict, dict]:
    """``(config.json, our encoder spec)`` of an IJepaModel directory, without reading its weights."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}/config.json: expected a JSON object, found {type(config).__name__}")
    return config, check_spec(spec_from_config(config, path), path)


def read_hf_dir(path: Path) -> dict:
    """An encoder record from a transformers IJepaModel directory (ours or a published one)."""
    config, spec = read_hf_config(path)
    state, meta = _read_weights(path)
    weights = from_hf(state, config, path)
    ours = meta.get("jepa_format") == HF_FORMAT
    return {"weights": weights, "spec": spec, "normalization": _normalization(path, meta, spec["in_chans"]),
            "config": metadata_json(meta, "config", path) if ours else None,
            "step": metadata_json(meta, "step", path) if ours else None,
            "encoder": metadata_json(meta, "encoder", path) if ours else None,
            "kind": "Hugging Face IJepaModel directory", "heads_stored": True}


def _normalization(path: Path, meta: dict, channels: int) -> dict:
    """Ours from the header, else the preprocessor config's mean/std, else ImageNet's (said in the log)."""
    if "normalization" in meta:
        return metadata_json(meta, "normalization", path)
    try:
        pre = json.loads((path / "preprocessor_config.json").read_text())
        mean, std = list(pre["image_mean"]), list(pre["image_std"])
        if len(mean) == len(std) == channels:
            log.info("%s: normalising inputs with its preprocessor_config.json mean %s, std %s", path, mean, std)
            return {"mean": mean, "std": std}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.info("%s: no usable preprocessor_config.json; normalising inputs with ImageNet's mean/std", path)
    return imagenet_normalization(channels)


def hf_weights_file(path: Path) -> bool:
    """Whether ``path`` is a directory's ``model.safetensors`` (the user named the file, not its directory)."""
    return path.name.startswith("model") and is_safetensors(path) and (path.parent / "config.json").is_file()
