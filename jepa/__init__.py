"""jepa: a kernel-optimised trainer for I-JEPA and hierarchical H-JEPA pre-training of ViT encoders."""
__version__ = "0.1.0"


def load_encoder(path, map_location="cpu"):
    """Load an exported target encoder (see ``python -m jepa.export``) as a ready ``nn.Module`` in eval mode."""
    from jepa.export import load_encoder as _load
    return _load(path, map_location=map_location)
