"""Where the kernel tests run and which backends they cover (shared by every kernel test file).

Without a GPU the Triton kernels run in the interpreter on CPU tensors; with
``JEPA_REAL_TRITON=1`` on a CUDA machine they are compiled and the tensors live on the GPU.
"""
import pytest
import torch

import kernels
from kernels import dispatch

GPU = torch.cuda.is_available() and not dispatch.interpreting()
DEVICE = "cuda" if GPU else "cpu"
BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(
        not kernels.HAS_TRITON or not (GPU or dispatch.interpreting()),
        reason="triton not installed, or compiled Triton without a GPU")),
    "torch",
]
