"""What the training stream does with image files that cannot be decoded: ``data.on_bad_image``.

Loader workers always replace a bad file by another image of its batch and report it with the batch;
this policy, in the main process, decides: ``error`` stops at the first one, ``skip`` logs each file
once and stops only when more than ``data.max_bad_images`` distinct files have failed.
"""
from __future__ import annotations

import logging
from typing import Sequence

from jepa.config.choices import OnBadImage
from jepa.data.datasets.decode import BadImageError


log = logging.getLogger("jepa")


class TooManyBadImagesError(BadImageError):
    """More distinct files failed than ``data.max_bad_images`` allows; ``files`` maps each name to its cause."""

    def __init__(self, files: dict[str, str], limit: int):
        listing = "\n".join(f"  {name}: {cause}" for name, cause in files.items())
        super().__init__(f"{len(files)} image files", f"cannot be decoded, more than data.max_bad_images={limit}:\n"
                         f"{listing}\nRepair or remove these files, or raise data.max_bad_images if the rest of the "
                         "dataset is fine")
        self.files, self.limit = dict(files), limit

    def __reduce__(self):
        return type(self), (self.files, self.limit)


class BadImages:
    """The ``data.on_bad_image`` policy over the bad files the batches report (``seen`` maps name to cause)."""

    def __init__(self, policy: OnBadImage = "skip", limit: int = 100):
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_image={policy!r}; valid: error, skip")
        self.policy, self.limit = policy, int(limit)
        self.seen: dict[str, str] = {}

    def check(self, bad: Sequence[tuple[str, str]]) -> None:
        """Apply the policy to one batch's replaced slots ``(name, cause)``; raises when training must stop."""
        if not bad:
            return
        if self.policy == "error":
            name, cause = bad[0]
            raise BadImageError(name, f"{cause}\n(data.on_bad_image is 'error'; set it to 'skip' to replace "
                                      "undecodable images and count them instead)")
        for name, cause in bad:
            if name not in self.seen:
                self.seen[name] = cause
                log.warning("skipping an undecodable image (%d so far, data.max_bad_images=%d): %s: %s",
                            len(self.seen), self.limit, name, cause)
        if len(self.seen) > self.limit:
            raise TooManyBadImagesError(self.seen, self.limit)
