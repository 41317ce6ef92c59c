"""Export an encoder: ``python -m jepa.export --checkpoint PATH --out OUT [--format jepa|hf|timm]``.

``OUT`` is exactly the path written; without ``--format`` its suffix says the format.

* ``jepa`` (``.safetensors``, or ``.pt``/``.pth``): the encoder's weights plus what rebuilds it (image size,
  patch size, channels, width, depth, heads, MLP ratio), the input normalisation, the run's config and
  step. ``jepa.load_encoder(path)`` turns it back into a ready ``nn.Module``.
* ``hf`` (a name without a suffix): a directory ``transformers.IJepaModel.from_pretrained(OUT)`` loads (config.json,
  model.safetensors, preprocessor_config.json with our normalisation).
* ``timm`` (``.safetensors``): a safetensors state dict in timm's ``VisionTransformer`` names (no class token, average
  pool, as timm's ``vit_*_gap`` I-JEPA models) and, beside it, the JSON kwargs that build it.

``--checkpoint`` is anything jepa reads: a training checkpoint, an export, an official I-JEPA
``.pth.tar`` or a Hugging Face directory (docs/interop.md). Nothing is unpickled; a large source is
memory-mapped and written one tensor at a time.
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
from jepa.errors import FlagError
from jepa.interop.fit import check_shapes, fit_weights, split_table
from jepa.interop.hf import write_hf_dir
from jepa.interop.layout import check_spec, grid_of
from jepa.interop.native import (ENCODERS, encoder_weights, saved_config, write_pt_export,  # noqa: F401
                                 write_safetensors_export)
from jepa.interop.safetensors_io import metadata_json, verify_safetensors
from jepa.interop.sources import read_encoder as _read_encoder
from jepa.interop.sources import source_digest  # noqa: F401 (jepa.eval uses it from here)
from jepa.interop.timm import kwargs_path, timm_kwargs, write_timm
from jepa.models.attention import resolve_backend
from jepa.models.pos_embed import sincos_2d
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


def check_image_size(size: int, patch: int, source: str | Path, flag: str = "img_size") -> int:
    """``size`` if it is a positive multiple of the encoder's ``patch`` size, else an error naming ``flag``."""
    if size < 1 or size % patch:
        below = max(patch, size // patch * patch)
        near = f"{below} or {below + patch}" if below < size else f"{patch}, {2 * patch}, ..."
        raise FlagError(f"{flag} {size} must be a positive multiple of the patch size {patch} of {source} "
                        f"(e.g. {near})")
    return size


def encoder_from(enc: dict, device="cpu", source: str | Path = "checkpoint", img_size: int | None = None):
    """Build the encoder a ``read_encoder`` result describes (at ``img_size`` if given), load its weights, eval mode.

    A stored position table is interpolated to another grid; our sin-cos table is recomputed.
    ``encoder.spec`` holds the constructor arguments, ``encoder.normalization`` the input mean/std.
    """
    spec = dict(enc["spec"])
    if img_size is not None:
        spec["img_size"] = check_image_size(img_size, spec["patch_size"], source)
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


FILE_SUFFIXES = {"jepa": (".safetensors", ".pt", ".pth"), "timm": (".safetensors",)}


def output_format(out: str | Path, fmt: str | None) -> str:
    """The format ``--out`` is written in: ``--format`` if given, else the suffix (``.safetensors``, ``.pt``/``.pth``:
    jepa; none: an hf directory). A suffix that contradicts ``--format`` is an error naming both."""
    out = Path(out)
    suffix = out.suffix.lower()
    files = FILE_SUFFIXES["jepa"]
    if fmt is None:
        if suffix in files:
            return "jepa"
        if not suffix or out.is_dir():
            return "hf"
        raise FlagError(f"--out {out}: the suffix {suffix} names no export format; use .safetensors or .pt/.pth "
                        "(a jepa export), a directory name without a suffix (hf), or give --format")
    if fmt not in FORMATS:
        raise FlagError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "hf":
        if suffix in files and not out.is_dir():
            raise FlagError(f"--out {out} names a {suffix} file but --format hf writes a directory; give a directory "
                            f"name such as {out.with_suffix('')}, or leave out --format hf")
        return fmt
    if suffix not in FILE_SUFFIXES[fmt]:
        said = f"the suffix {suffix}" if suffix else "no suffix (a directory, --format hf)"
        raise FlagError(f"--out {out} has {said} but --format {fmt} writes a {' or '.join(FILE_SUFFIXES[fmt])} file; "
                        f"use --out {out.with_suffix('.safetensors')}")
    return fmt


def check_num_heads(num_heads: int | None, enc: dict | None = None, source: str | Path = "") -> None:
    """``--num-heads`` is a positive count, and only given for a file that does not store its own."""
    if num_heads is None:
        return
    width = f" of the encoder width {enc['spec']['embed_dim']}" if enc else " of the encoder width"
    if num_heads < 1:
        raise FlagError(f"--num-heads must be a positive divisor{width}, got {num_heads}")
    if enc is not None and enc["heads_stored"] and enc["spec"]["num_heads"] != num_heads:
        raise FlagError(f"--num-heads {num_heads}: {source} stores its head count ({enc['spec']['num_heads']}); "
                        "--num-heads is only for files that do not (official checkpoints, foreign timm files)")


def export_weights(enc: dict, source: str | Path) -> tuple[dict, torch.Tensor | None]:
    """``(weights as fp32, stored position table or None)`` of an encoder record, checked against its spec on the
    meta device: no model is built and a memory-mapped source is read tensor by tensor when written."""
    weights, table = split_table(enc["weights"], grid_of(enc["spec"]), Path(source), "encoder")
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    with torch.device("meta"):
        shell = build_from_spec(enc["spec"], "meta", attention="math")
    check_shapes(shell, weights, Path(source), "encoder")
    if table is not None:
        table = table.float().reshape(1, *table.shape[-2:])
    return weights, table


def export_encoder(checkpoint: str | Path, out: str | Path, which: str = "target", fmt: str | None = None,
                   num_heads: int | None = None) -> tuple[Path, dict]:
    """Write the ``which`` encoder of ``checkpoint`` to exactly ``out`` in format ``fmt`` (default: from the
    suffix); ``(out, the encoder record written)``."""
    out, fmt = Path(out), output_format(out, fmt)
    check_num_heads(num_heads)
    enc = read_encoder(checkpoint, which, num_heads=num_heads)
    check_num_heads(num_heads, enc, checkpoint)
    weights, table = export_weights(enc, checkpoint)
    record = {**enc, "weights": weights if table is None else {**weights, "pos_embed": table}}
    if fmt == "jepa" and out.suffix.lower() == ".safetensors":
        write_safetensors_export(out, record, str(checkpoint))
    elif fmt == "jepa":
        write_pt_export(out, record, str(checkpoint))
    else:
        grid = grid_of(enc["spec"])
        full = {**weights, "pos_embed": table if table is not None else
                sincos_2d(enc["spec"]["embed_dim"], *grid).unsqueeze(0)}
        if fmt == "hf":
            meta = {"config": enc["config"], "step": enc["step"], "encoder": enc["encoder"], "source": str(checkpoint)}
            write_hf_dir(out, full, enc["spec"], enc["normalization"], meta)
        else:
            write_timm(out, full, enc["spec"], enc["normalization"], str(checkpoint))
    return out, record


def read_back(out: Path, fmt: str, which: str) -> None:
    """What was written reads back (checksum and header), one tensor at a time."""
    if fmt == "jepa" and out.suffix.lower() == ".safetensors":
        check_spec(metadata_json(verify_safetensors(out), "spec", out), out)
    elif fmt == "jepa":
        read_encoder(out, which)
    elif fmt == "hf":
        verify_safetensors(out / "model.safetensors")
    else:
        verify_safetensors(out)


def describe(out: Path, fmt: str, which: str, enc: dict) -> str:
    """The line printed after an export: what was written and how to load it."""
    spec = enc["spec"]
    n = sum(v.numel() for k, v in enc["weights"].items() if k != "pos_embed")
    grid = grid_of(spec)
    head = (f"wrote {out}: {which} encoder, {n / 1e6:.2f}M parameters, input [B, {spec['in_chans']}, "
            f"{spec['img_size']}, {spec['img_size']}] -> tokens [B, {grid[0] * grid[1]}, {spec['embed_dim']}]")
    if fmt == "hf":
        return f"{head}; load with transformers.IJepaModel.from_pretrained('{out}') (last_hidden_state)"
    if fmt == "timm":
        return (f"{head}; timm kwargs (also in {out.with_suffix('.json')}): {json.dumps(timm_kwargs(spec))}; "
                "build timm.models.vision_transformer.VisionTransformer(**kwargs), then "
                f"load_state_dict(safetensors.torch.load_file('{out}')); forward_features gives the tokens")
    return f"{head}; load with jepa.load_encoder('{out}')"


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m jepa.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint, export, official I-JEPA .pth.tar or Hugging Face directory")
    parser.add_argument("--out", required=True, help="the path written: a .safetensors or .pt/.pth file (jepa), a "
                        "directory (hf) or a .safetensors file (timm, with its .json beside it)")
    parser.add_argument("--format", choices=FORMATS,
                        help="jepa: for jepa.load_encoder; hf: transformers IJepaModel directory; timm: timm "
                             "VisionTransformer state dict + kwargs (default: from the --out suffix)")
    parser.add_argument("--encoder", choices=ENCODERS, default="target",
                        help="which encoder to export (default: target, the EMA encoder)")
    parser.add_argument("--num-heads", type=int,
                        help="head count, for official checkpoints of a width outside the official table")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (never an input or a "
                        "training checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fmt = output_format(args.out, args.format)
    check_num_heads(args.num_heads)
    out = check_output(args.out, [args.checkpoint], args.force, allow_dir=fmt == "hf")
    if fmt == "timm":
        check_output(kwargs_path(out), [args.checkpoint], args.force)
    out, enc = export_encoder(args.checkpoint, out, args.encoder, fmt, args.num_heads)
    read_back(out, fmt, args.encoder)
    print(describe(out, fmt, args.encoder, enc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
