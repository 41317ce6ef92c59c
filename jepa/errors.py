"""Errors every layer may raise about the user's input, importable without torch or the config schema."""


class ConfigError(ValueError):
    """A config key is unknown, of the wrong type or out of range; the message names the key and what is valid."""
