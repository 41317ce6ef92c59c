"""Shell-style brace patterns (``shard-{000000..000127}.tar``, ``{a,b}``): the data.shards key, expanded.

Pure string work, so validation can check a pattern without the data reader, which imports it from here.
"""
from __future__ import annotations

import re

from jepa.errors import ConfigError

MAX_SHARDS = 1_000_000
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..127}`` ranges (zero padding kept) and ``{a,b}`` lists, left to right, like a shell."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = pattern.find("}", start)
    if end < 0:
        raise ConfigError(f"data.shards: unmatched '{{' in {pattern!r}")
    body, head, tail = pattern[start + 1:end], pattern[:start], pattern[end + 1:]
    match = _RANGE.fullmatch(pattern[start:end + 1])
    if match:
        lo, hi = int(match[1]), int(match[2])
        if hi < lo:
            raise ConfigError(f"data.shards: empty range {{{body}}} in {pattern!r}")
        if hi - lo >= MAX_SHARDS:
            raise ConfigError(f"data.shards: {{{body}}} in {pattern!r} names more than {MAX_SHARDS} shards")
        width = len(match[1]) if match[1].startswith("0") else 0
        choices = [str(v).zfill(width) for v in range(lo, hi + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ConfigError(f"data.shards: '{{{body}}}' in {pattern!r} is neither a range {{000..127}} nor a list {{a,b}}")
    rests = expand_braces(tail)
    if len(choices) * len(rests) > MAX_SHARDS:
        raise ConfigError(f"data.shards: {pattern!r} names more than {MAX_SHARDS} shards")
    return [head + c + rest for c in choices for rest in rests]
