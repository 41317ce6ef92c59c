"""Export an encoder: ``python -m jepa.export --checkpoint PATH --out OUT [--format jepa|hf|timm]``.

* ``jepa`` (default): one safetensors file, the encoder's weights plus, in its header, what rebuilds
  it (image size, patch size, channels, width, depth, heads, MLP ratio), the input normalisation, the
  run's config and step. ``jepa.load_encoder(path)`` turns it back into a ready ``nn.Module``.
* ``hf``: a directory ``transformers.IJepaModel.from_pretrained(OUT)`` loads (config.json,
  model.safetensors, preprocessor_config.json with our normalisation).
* ``timm``: a safetensors state dict in timm's ``VisionTransformer`` names (no class token, average
  pool, as timm's ``vit_*_gap`` I-JEPA models) and, beside it, the JSON kwargs that build it.

``--checkpoint`` is anything jepa reads: a training checkpoint, an export, an official I-JEPA
``.pth.tar`` or a Hugging Face directory (docs/interop.md). Nothing is unpickled.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from jepa import cli
from jepa.checkpoint import CheckpointError, check_output
from jepa.config import ConfigError, config_from_dict
from jepa.interop.fit import fit_weights
from jepa.interop.hf import write_hf_dir
from jepa.interop.layout import grid_of
from jepa.interop.native import ENCODERS, encoder_weights, saved_config, write_safetensors_export  # noqa: F401
from jepa.interop.sources import read_encoder as _read_encoder
from jepa.interop.sources import source_digest  # noqa: F401 (jepa.eval uses it from here)
from jepa.interop.timm import timm_kwargs, write_timm
from jepa.models.attention import resolve_backend
from jepa.models.vit import VisionTransformer

log = logging.getLogger("jepa")
FORMATS = ("jepa", "hf", "timm")


def read_encoder(path: str | Path, which: str = "target", map_location="cpu", num_heads: int | None = None) -> dict:
    """``{"weights", "spec", "normalization", "config", "step", "encoder", "kind"}`` of any source (read on the CPU).

    ``num_heads`` is used only for files that do not store the head count (official checkpoints).
    """
    return _read_encoder(path, which, num_heads)


def build_from_spec(spec: dict, device="cpu", attention: str = "auto") -> VisionTransformer:
    return VisionTransformer(**spec, attention=resolve_backend(attention, device))


def encoder_from(enc: dict, device="cpu", source: str | Path = "checkpoint", img_size: int | None = None):
    """Build the encoder a ``read_encoder`` result describes (at ``img_size`` if given), load its weights, eval mode.

    A stored position table is interpolated to another grid; our sin-cos table is recomputed.
    ``encoder.spec`` holds the constructor arguments, ``encoder.normalization`` the input mean/std.
    """
    spec = dict(enc["spec"])
    if img_size is not None:
        if img_size < 1 or img_size % spec["patch_size"]:
            raise ValueError(f"image size {img_size} must be a positive multiple of the patch size "
                             f"{spec['patch_size']} of {source}")
        spec["img_size"] = img_size
    encoder = build_from_spec(spec, device)
    for note in fit_weights(encoder, enc["weights"], grid_of(enc["spec"]), Path(source), "encoder"):
        log.info("%s", note)
    encoder.normalization = enc["normalization"]
    encoder.spec = spec
    return encoder.to(device).eval()


def load_encoder(path: str | Path, map_location="cpu", which: str = "target", num_heads: int | None = None,
                 img_size: int | None = None) -> VisionTransformer:
    """A ready encoder in eval mode: images ``[B, C, H, W]``, normalised as in training, to tokens ``[B, N, D]``.

    ``path`` is anything jepa reads (docs/interop.md). The output is after the final LayerNorm;
    ``encoder.normalization`` holds the input mean/std. ``img_size`` rebuilds it for another image size.
    """
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return encoder_from(read_encoder(path, which, num_heads=num_heads), device, path, img_size)


def source_config(enc: dict, path: Path, img_size: int | None = None):
    """The ``Config`` an encoder was trained with, or one describing it (foreign weights store none)."""
    spec = enc["spec"]
    if enc["config"] is not None and img_size is None:
        return saved_config(enc["config"], path)
    raw = enc["config"] or {
        "name": Path(path).stem,
        "model": {k: spec[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size")},
        "data": {"channels": spec["in_chans"], "mean": list(enc["normalization"]["mean"]),
                 "std": list(enc["normalization"]["std"])}}
    raw = {**raw, "data": {**raw.get("data", {}), "image_size": img_size or spec["img_size"]},
           "masks": {**raw.get("masks", {}), "min_keep": 0}}
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{path}: cannot describe its encoder as a jepa config ({e})") from None


def safetensors_path(out: str | Path) -> Path:
    """``out`` with the ``.safetensors`` suffix (replacing ``.pt``/``.pth``/``.bin``)."""
    out = Path(out)
    if out.suffix == ".safetensors":
        return out
    return out.with_suffix(".safetensors") if out.suffix in (".pt", ".pth", ".bin") else \
        out.with_name(out.name + ".safetensors")


def export_encoder(checkpoint: str | Path, out: str | Path, which: str = "target", fmt: str = "jepa",
                   num_heads: int | None = None) -> tuple[Path, VisionTransformer]:
    """Write the ``which`` encoder of ``checkpoint`` to ``out`` in format ``fmt``; ``(path written, encoder)``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    enc = read_encoder(checkpoint, which, num_heads=num_heads)
    encoder = encoder_from(enc, "cpu", checkpoint)
    weights = encoder.state_dict()  # holds pos_embed only when the table is stored, not our sin-cos
    if fmt == "jepa":
        return write_safetensors_export(safetensors_path(out), {**enc, "weights": weights}, str(checkpoint)), encoder
    weights = {**weights, "pos_embed": encoder.pos_embed}
    if fmt == "hf":
        meta = {"config": enc["config"], "step": enc["step"], "encoder": enc["encoder"], "source": str(checkpoint)}
        return write_hf_dir(Path(out), weights, enc["spec"], enc["normalization"], meta), encoder
    path, _ = write_timm(safetensors_path(out), weights, enc["spec"], enc["normalization"], str(checkpoint))
    return path, encoder


def describe(out: Path, fmt: str, which: str, enc: VisionTransformer) -> str:
    """The line printed after an export: what was written and how to load it."""
    n = sum(p.numel() for p in enc.parameters())
    size = enc.grid[0] * enc.patch_embed.stride[0]
    head = (f"wrote {out}: {which} encoder, {n / 1e6:.2f}M parameters, input [B, {enc.patch_embed.in_channels}, "
            f"{size}, {size}] -> tokens [B, {enc.num_patches}, {enc.embed_dim}]")
    if fmt == "hf":
        return f"{head}; load with transformers.IJepaModel.from_pretrained('{out}') (last_hidden_state)"
    if fmt == "timm":
        return (f"{head}; timm kwargs (also in {out.with_suffix('.json')}): {json.dumps(timm_kwargs(enc.spec))}; "
                "build timm.models.vision_transformer.VisionTransformer(**kwargs), then "
                f"load_state_dict(safetensors.torch.load_file('{out}')); forward_features gives the tokens")
    return f"{head}; load with jepa.load_encoder('{out}')"


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def output_path(out: str | Path, fmt: str) -> Path:
    """The path ``export_encoder`` writes for ``--out out`` in format ``fmt``."""
    return Path(out) if fmt == "hf" else safetensors_path(out)


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m jepa.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint, export, official I-JEPA .pth.tar or Hugging Face directory")
    parser.add_argument("--out", required=True, help="output: a .safetensors file (jepa, timm) or a directory (hf)")
    parser.add_argument("--format", choices=FORMATS, default="jepa",
                        help="jepa: safetensors for jepa.load_encoder (default); hf: transformers IJepaModel "
                             "directory; timm: timm VisionTransformer state dict + kwargs")
    parser.add_argument("--encoder", choices=ENCODERS, default="target",
                        help="which encoder to export (default: target, the EMA encoder)")
    parser.add_argument("--num-heads", type=int,
                        help="head count, for official checkpoints of a width outside the official table")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (never an input or a "
                        "training checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for out in {Path(args.out), output_path(args.out, args.format)}:  # as given, and with the format's suffix
        check_output(out, [args.checkpoint], args.force, allow_dir=args.format == "hf")
    out, enc = export_encoder(args.checkpoint, args.out, args.encoder, args.format, args.num_heads)
    if args.format == "jepa":
        enc = load_encoder(out, which=args.encoder)  # what was written reads back
    print(describe(out, args.format, args.encoder, enc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
