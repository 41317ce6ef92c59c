"""The ``backend`` fixture of the kernel tests: each backend in turn, kernel outputs poisoned first."""
import pytest
import torch

import jepa_kernels
from jepa_kernels import dispatch

from kernel_backends import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Select a backend and make every kernel output start as NaN (-7 for integers), so unwritten
    elements cannot pass."""

    def poisoned(shape, dtype, device):
        out = torch.empty(shape, dtype=dtype, device=device)
        return out.fill_(float("nan")) if dtype.is_floating_point else out.fill_(-7)

    monkeypatch.setattr(dispatch, "empty", poisoned)
    jepa_kernels.set_backend(request.param)
    yield request.param
    jepa_kernels.set_backend("auto")
