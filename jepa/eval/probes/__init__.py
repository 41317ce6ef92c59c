"""Downstream evaluation beyond the cached-feature probes: attentive probe, streamed SGD linear probe, their data.

Settings are the ``probe`` and ``finetune`` sections of ``jepa.config``.
"""
