"""The patch grid: how a square image of the configured size is cut into patches (plain arithmetic, no torch)."""


def patch_grid(image_size: int, patch_size: int) -> tuple[int, int]:
    """``(rows, columns)`` of ``patch_size`` patches on an ``image_size`` square: where masks and positions live."""
    return image_size // patch_size, image_size // patch_size
