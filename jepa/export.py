"""Export the target encoder: ``python -m jepa.export --checkpoint PATH --out encoder.pt``.

The file holds the encoder's weights, what rebuilds it (image size, patch size,
channels, width, depth, heads, MLP ratio), the input normalisation used in training
and the run's config, as tensors and primitives only, so it loads with
``torch.load(..., weights_only=True)``. ``jepa.load_encoder(path)`` turns it back
into a ready ``nn.Module``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from jepa import cli
from jepa.checkpoint import (ENCODER_FORMAT, FORMAT, CheckpointError, check_checkpoint, check_output, load_file,
                             verify_checksum, with_checksum)
from jepa.io import atomic_save
from jepa.config import ConfigError, config_from_dict
from jepa.data import normalisation
from jepa.models import EncoderName, encoder_spec
from jepa.models.attention import resolve_backend
from jepa.models.vit import VisionTransformer

ENCODERS: tuple[str, ...] = EncoderName.__args__


def encoder_weights(model_state: dict, which: str = "target", source: str | Path = "checkpoint") -> dict:
    """The ``which`` encoder's entries of a JEPA state dict, without the prefix."""
    if which not in ENCODERS:
        raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {which!r}")
    prefix = f"{which}_encoder."
    out = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(f"{source} holds no '{which}_encoder.*' weights")
    return out


def read_encoder(path: str | Path, which: str = "target", map_location="cpu") -> dict:
    """``{"weights", "spec", "normalization", "config", "step", "encoder"}`` from an export or a training checkpoint."""
    path = Path(path)
    raw = load_file(path, map_location)
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt == ENCODER_FORMAT:
        verify_checksum(raw, path)
        if which != raw.get("encoder", "target"):
            raise CheckpointError(f"{path} is an export of the {raw.get('encoder')} encoder; the {which} encoder "
                                  "is only in the training checkpoint")
        return {k: raw[k] for k in ("weights", "spec", "normalization", "config", "step", "encoder")}
    if fmt != FORMAT:
        raise CheckpointError(f"{path} is neither a jepa encoder export ('{ENCODER_FORMAT}') nor a training "
                              f"checkpoint ('{FORMAT}')")
    state = check_checkpoint(raw, path)
    cfg = saved_config(state["config"], path)
    mean, std = normalisation(cfg)
    return {"weights": encoder_weights(state["model"], which, path), "spec": encoder_spec(cfg),
            "normalization": {"mean": list(mean), "std": list(std)}, "config": state["config"],
            "step": state["step"], "encoder": which}


def saved_config(raw: dict, path: Path):
    """The ``Config`` a checkpoint or export saved; a CheckpointError naming ``path`` if it no longer validates."""
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config is not valid for this version of jepa ({e})") from None


def export_encoder(checkpoint: str | Path, out: str | Path, which: str = "target") -> Path:
    """Write the ``which`` encoder of a training checkpoint to ``out`` (atomically)."""
    enc = read_encoder(checkpoint, which)
    payload = {"format": ENCODER_FORMAT, "source": str(checkpoint), **enc}
    return atomic_save(with_checksum(payload), out)


def build_from_spec(spec: dict, device="cpu", attention: str = "auto") -> VisionTransformer:
    return VisionTransformer(**spec, attention=resolve_backend(attention, device))


def load_encoder(path: str | Path, map_location="cpu", which: str = "target") -> VisionTransformer:
    """A ready encoder in eval mode: images ``[B, C, H, W]``, normalised as in training, to tokens ``[B, N, D]``.

    ``path`` is an export (``python -m jepa.export``) or a training checkpoint. The output
    is after the final LayerNorm. ``encoder.normalization`` holds the training mean/std.
    """
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return encoder_from(read_encoder(path, which, map_location), device, path)


def encoder_from(enc: dict, device="cpu", source: str | Path = "checkpoint") -> VisionTransformer:
    """Build the encoder a ``read_encoder`` result describes, load its weights, eval mode."""
    encoder = build_from_spec(enc["spec"], device)
    try:
        encoder.load_state_dict(enc["weights"])
    except RuntimeError as e:
        raise CheckpointError(f"{source}: the weights do not fit the encoder its spec describes ({e})") from None
    encoder.normalization = enc["normalization"]
    return encoder.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jepa.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) to export from")
    parser.add_argument("--out", required=True, help="where to write the encoder file (.pt)")
    parser.add_argument("--encoder", choices=ENCODERS, default="target",
                        help="which encoder to export (default: target, the EMA encoder)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (never an input or a "
                        "training checkpoint)")
    args = parser.parse_args(argv)
    out = export_encoder(args.checkpoint, check_output(args.out, [args.checkpoint], args.force), args.encoder)
    enc = load_encoder(out, which=args.encoder)
    n = sum(p.numel() for p in enc.parameters())
    print(f"wrote {out}: {args.encoder} encoder, {n / 1e6:.2f}M parameters, input "
          f"[B, {enc.patch_embed.in_channels}, {enc.grid[0] * enc.patch_embed.stride[0]}, "
          f"{enc.grid[1] * enc.patch_embed.stride[1]}] -> tokens [B, {enc.num_patches}, {enc.embed_dim}]; "
          f"load with jepa.load_encoder('{out}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
