"""Where the kernel tests run, which backends they cover, and what the row-kernel tests share.

Without a GPU the Triton kernels run in the interpreter on CPU tensors; with
``JEPA_REAL_TRITON=1`` on a CUDA machine they are compiled and the tensors live on the GPU.
"""
import pytest
import torch

import jepa_kernels
from jepa_kernels import dispatch

GPU = torch.cuda.is_available() and not dispatch.interpreting()
DEVICE = "cuda" if GPU else "cpu"
BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(
        not jepa_kernels.HAS_TRITON or not (GPU or dispatch.interpreting()),
        reason="triton not installed, or compiled Triton without a GPU")),
    "torch",
]

# (B, N, D, M, K) for the row kernels (gather, target loss): odd D, K=1, B=1, M=1 and 4
ROW_SHAPES = [(1, 5, 3, 1, 1), (2, 7, 61, 4, 3), (3, 16, 192, 4, 5), (2, 9, 200, 1, 4), (1, 6, 200, 4, 1)]
ROW_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_idx(m, b, k, n):
    """``[M, B, K]`` indices into ``n`` rows with duplicates across masks (mask 1 repeats mask 0's first rows)
    and within."""
    idx = torch.randint(0, n, (m, b, k))
    if m > 1:
        idx[1, :, : (k + 1) // 2] = idx[0, :, : (k + 1) // 2]
    return idx.to(DEVICE)


def rel_err(a, ref):
    return ((a.cpu().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
