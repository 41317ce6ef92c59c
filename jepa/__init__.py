"""jepa: a kernel-optimised trainer for I-JEPA and hierarchical H-JEPA pre-training of ViT encoders."""
__version__ = "0.1.0"


def load_encoder(path, map_location="cpu", **kwargs):
    """A ready encoder (``nn.Module``, eval mode) from an export, a training checkpoint, an official I-JEPA
    checkpoint or a Hugging Face ``IJepaModel`` directory; keyword arguments as ``jepa.export.load_encoder``."""
    from jepa.export import load_encoder as _load
    return _load(path, map_location=map_location, **kwargs)
