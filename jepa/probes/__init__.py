"""Downstream evaluation beyond the cached-feature probes: attentive probe, streamed SGD linear probe, their data.

Settings (the ``probe`` and ``finetune`` config sections) are in ``jepa.probes.settings``.
"""
