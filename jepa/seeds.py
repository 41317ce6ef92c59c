"""Seeds derived from coordinates (seed, rank, epoch, batch, ...), the same in every process and Python version."""
from __future__ import annotations

import hashlib


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers (and short tags), stable across processes and Python versions."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
