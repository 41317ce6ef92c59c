"""Weights in and out of the ecosystem: our safetensors export, Hugging Face ``IJepaModel``, timm, official I-JEPA.

One module per format (``native``, ``hf``, ``timm``, ``official``), ``sources`` tells them apart,
``init`` starts a training run from any of them. See docs/interop.md.
"""
